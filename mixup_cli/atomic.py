"""Nothing half-written: outputs are built under a temporary name beside the
target and renamed into place only when complete.

Everything a run keeps beside ``OUT`` while it works starts with
``.OUT.mixup-partial`` (the partial output itself, the resume journal, the
staging directory of an ``.npz``), so it is hidden, never matches a glob such
as ``*.h5``, and can be found and removed as one group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

from mixup_cli.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None

PARTIAL_SUFFIX = ".mixup-partial"
LOCK_SUFFIX = ".lock"


def partial_path(final: Path) -> Path:
    """Hidden, clearly named, and without the target's extension, so it is
    never mistaken for output by a glob such as ``*.h5``."""
    final = Path(final)
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def partials(final: Path, *, with_lock: bool = True) -> list[Path]:
    """Every temporary entry a run for ``final`` may leave beside it."""
    prefix = partial_path(final).name
    lock = lock_path(final).name
    try:
        return sorted(
            p for p in Path(final).parent.iterdir()
            if p.name.startswith(prefix) and (with_lock or p.name != lock)
        )
    except OSError:
        return []


def lock_path(final: Path) -> Path:
    partial = partial_path(final)
    return partial.with_name(partial.name + LOCK_SUFFIX)


class RunLock:
    """An exclusive lock on writing ``final``: two runs never share a partial output.

    The kernel releases it when the process dies, SIGKILL included, so a
    killed run never blocks the next one. Filesystems without ``flock``
    run unlocked.
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.path = lock_path(final)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{self.final}: another mixup run is writing it right now; "
                "wait for that run to end or choose another output path"
            ) from None
        except OSError:  # no locking on this filesystem
            os.close(fd)
            remove(self.path)
            return self
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock; the lock file goes too unless a partial output stays for --resume."""
        if self._fd is None:
            return
        if not partials(self.final, with_lock=False):
            remove(self.path)
        os.close(self._fd)
        self._fd = None


def remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_partials(final: Path) -> None:
    """Remove the partial output of ``final`` and what goes with it (the lock
    file stays with its holder, see ``RunLock.release``)."""
    for path in partials(final, with_lock=False):
        remove(path)


def sync(path: Path, changed_since_ns: int | None = None) -> None:
    """fsync a file, or every file under a directory. With
    ``changed_since_ns``, only what was modified since then, the directories
    under ``path`` (their new entries) included."""
    path = Path(path)
    if changed_since_ns is None:
        paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    else:
        paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        try:
            if changed_since_ns is not None and p.stat().st_mtime_ns < changed_since_ns:
                continue
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            if changed_since_ns is None:
                raise
            continue  # removed meanwhile: nothing of it to keep
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_quietly(path: Path, data_only: bool = False) -> None:
    """fsync (or fdatasync) one file or directory, ignoring failures: for
    early flushes whose errors a later, checked sync reports."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    sync_quietly(directory)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back while the block runs (main thread only).

    Used around the final renames, so that an interruption cannot fall
    between the output and its sidecar. The handlers are swapped for a
    recorder rather than masking the signals, which would not hold with
    other threads running; a signal that arrives meanwhile is raised again,
    under the original handler, as soon as the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_IGN, None):
            continue
        previous[signum] = handler
        signal.signal(signum, lambda received, frame: caught.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def commit(tmp: Path, final: Path, overwrite: bool, fsync: bool = True) -> None:
    """Move the finished ``tmp`` to ``final``; replace an existing one only if allowed.

    ``final`` is never opened: an existing one is replaced by the rename
    alone, so until then it stays exactly as it was.
    """
    tmp, final = Path(tmp), Path(final)
    if fsync:
        sync(tmp)
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise OutputError(f"{final}: already exists; pass --overwrite to replace it")
        if final.is_dir() != tmp.is_dir():
            kind = "directory" if final.is_dir() else "file"
            raise OutputError(f"{final}: exists and is a {kind}; remove it or choose another output path")
        if tmp.is_dir():
            # Directories cannot be swapped in one rename: move the old aside first.
            old = final.with_name(f".{final.name}.mixup-old")
            remove(old)
            os.replace(final, old)
            os.replace(tmp, final)
            remove(old)
            _sync_dir(final.parent)
            return
    os.replace(tmp, final)
    _sync_dir(final.parent)


def stage_text(tmp: Path, text: str) -> Path:
    """Write ``text`` to the temporary file ``tmp``, flushed to disk; return ``tmp``."""
    tmp = Path(tmp)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        remove(tmp)
        raise
    return tmp
