"""Nothing half-written: outputs are built under a temporary name beside the
target and renamed into place only when complete.

Everything a run keeps beside ``OUT`` while it works starts with
``.OUT.mixup-partial`` (the partial output itself, the resume journal, the
staging directory of an ``.npz``), so it is hidden, never matches a glob such
as ``*.h5``, and can be found and removed as one group.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
from pathlib import Path

from mixup_cli.core import beside, stopping
from mixup_cli.core.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked against each other
    fcntl = None

log = logging.getLogger("mixup_cli")

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
            p for p in Path(final).parent.iterdir() if p.name.startswith(prefix) and (with_lock or p.name != lock)
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

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        fd = self._open()
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

    def _open(self) -> int:
        """The lock file, never through a link: a link or special file
        planted at its name is removed (it is mixup's name), once."""
        for attempt in (0, 1):
            try:
                return beside.open_regular(self.path, os.O_RDWR | os.O_CREAT)
            except beside.NotPlain as exc:
                st = beside.lstat(self.path)
                if attempt or st is None or stat.S_ISDIR(st.st_mode):
                    raise OutputError(
                        f"{self.path}: {exc.strerror}, not the lock file mixup makes there; "
                        f"remove it or choose another output path"
                    ) from None
                log.warning("%s: removed %s found at the name of mixup's lock file", self.path, beside.kind(st.st_mode))
                beside.clear(self.path)
        raise AssertionError("unreachable")

    def release(self) -> None:
        """Unlock; the lock file goes too unless a partial output stays for --resume."""
        if self._fd is None:
            return
        if not partials(self.final, with_lock=False):
            remove(self.path)
        os.close(self._fd)
        self._fd = None


def remove(path: Path) -> None:
    """Remove the entry at ``path``: a link itself, never what it points to."""
    beside.clear(path)


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
    st = beside.lstat(path)
    is_dir = st is not None and stat.S_ISDIR(st.st_mode)  # a link to a directory is not walked
    if changed_since_ns is None:
        paths = [p for p in path.rglob("*") if beside.plain_file(p)] if is_dir else [path]
    else:
        paths = [path, *path.rglob("*")] if is_dir else [path]
    for p in paths:
        try:
            if changed_since_ns is not None and p.lstat().st_mtime_ns < changed_since_ns:
                continue
            if p.is_symlink():
                continue  # not written by the run: nothing of it to flush
            fd = os.open(p, os.O_RDONLY | beside.NOFOLLOW | beside.NONBLOCK)
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
        fd = os.open(path, os.O_RDONLY | beside.NOFOLLOW | beside.NONBLOCK)
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


def commit(tmp: Path, final: Path, overwrite: bool, fsync: bool = True) -> None:
    """Move the finished file ``tmp`` to ``final`` in one rename; replace an
    existing one only if allowed (a single file, such as a picture)."""
    tmp, final = Path(tmp), Path(final)
    if fsync:
        sync(tmp)
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise OutputError(f"{final}: already exists; pass --overwrite to replace it")
    os.replace(tmp, final)
    _sync_dir(final.parent)


# ---------------------------------------------------------------- the final commit
#
# An output is committed in up to three steps: OUT (a file renamed over the
# old one, or a directory swapped with it), then its sidecar, then the old
# data removed. A record of the commit, ``.OUT.mixup-partial.commit.json``,
# is written and flushed before the first step; it names the new output and
# sidecar by inode. Whatever instant a kill falls on, the next command on OUT
# (``recover``) tells from the inodes which steps were done, and finishes the
# commit (OUT already new) or rolls it back (OUT still old).

COMMIT_SUFFIX = ".commit.json"
_OLD_SUFFIX = ".old"  # an old directory set aside where it cannot be swapped
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "amd64": 316, "arm64": 276}


SIDECAR_SUFFIX = ".provenance.json"  # provenance.SIDECAR_SUFFIX (not imported here: numpy)
# What a commit record holds is a few hundred bytes: anything larger was not written by mixup.
RECORD_LIMIT = 64 * 1024


def commit_record_path(final: Path) -> Path:
    partial = partial_path(final)
    return partial.with_name(partial.name + COMMIT_SUFFIX)


def sidecar_names(final: Path) -> tuple[Path, Path]:
    """OUT's sidecar and the name it is staged under: derived from OUT, never
    read from a file (a record planted beside OUT names nothing)."""
    final = Path(final)
    partial = partial_path(final)
    return final.with_name(final.name + SIDECAR_SUFFIX), partial.with_name(partial.name + SIDECAR_SUFFIX)


def _old_aside_path(final: Path) -> Path:
    partial = partial_path(final)
    return partial.with_name(partial.name + _OLD_SUFFIX)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux ``renameat2``
    with ``RENAME_EXCHANGE``). False where the system or filesystem cannot."""
    import ctypes
    import platform

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    args = (_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    fn = getattr(libc, "renameat2", None)  # glibc 2.28 and later
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        result = fn(*args)
    else:
        number = _SYS_RENAMEAT2.get(platform.machine())
        if number is None:
            return False
        libc.syscall.restype = ctypes.c_long
        result = libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(args[0]),
            ctypes.c_char_p(args[1]),
            ctypes.c_int(args[2]),
            ctypes.c_char_p(args[3]),
            ctypes.c_uint(args[4]),
        )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # no renameat2, or a filesystem without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _ident(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


class CommitIncomplete(OutputError):
    """The new output is in place but not yet its sidecar; the commit record
    stays, so the next command on OUT finishes the commit."""


def commit_output(tmp: Path, final: Path, sidecar_tmp: Path, sidecar: Path, overwrite: bool, check=None) -> None:
    """Put the finished output ``tmp`` and its sidecar in place: ``final``
    and ``sidecar``, replacing old ones only with ``overwrite``.

    A failure before ``final`` is replaced leaves everything as it was (the
    record is removed again); one after it raises ``CommitIncomplete``.
    ``check()`` runs once the record is written, right before the first
    rename (the last look at what an old ``final`` holds).
    """
    tmp, final, sidecar_tmp, sidecar = Path(tmp), Path(final), Path(sidecar_tmp), Path(sidecar)
    if (sidecar, sidecar_tmp) != sidecar_names(final) or tmp != partial_path(final):
        raise ValueError("commit_output: the names beside OUT are derived from OUT")  # recover() derives them again
    old_exists = final.exists() or final.is_symlink()
    if old_exists and not overwrite:
        raise OutputError(f"{final}: already exists; pass --overwrite to replace it")
    record = commit_record_path(final)
    steps = {
        "output": final.name,  # for people; recover() derives every name from OUT
        "new_output": _ident(tmp),
        "new_sidecar": _ident(sidecar_tmp),
    }
    os.replace(stage_text(record.with_name(record.name + ".tmp"), json.dumps(steps) + "\n"), record)
    _sync_dir(final.parent)
    test_pause("commit-record")
    try:
        checked = _ident(final)  # what check() looks at; what is replaced must be that very entry
        if check is not None:
            check()
        test_pause("checked")
        staged = beside.lstat(tmp)
        if old_exists and staged is not None and stat.S_ISDIR(staged.st_mode):
            _swap_directory(tmp, final, checked)
        else:
            os.replace(tmp, final)
    except BaseException:
        aside = _old_aside_path(final)
        if (final.exists() or final.is_symlink()) or not (aside.exists() or aside.is_symlink()):
            remove(record)  # nothing replaced: as it was
            _sync_dir(final.parent)
        # else the old directory could not be moved back: the record lets recover() do it
        raise
    _sync_dir(final.parent)
    test_pause("output-in-place")
    try:
        os.replace(sidecar_tmp, sidecar)
        _sync_dir(final.parent)
    except OSError as exc:
        raise CommitIncomplete(
            f"{final}: the new output is in place but its sidecar could not be ({exc.strerror}); "
            f"the next mixup command on {final.name} finishes this"
        ) from None
    test_pause("sidecar-in-place")
    _finish(final)


class ReplacedMeanwhile(OutputError):
    """OUT was replaced by another entry between its check and the swap: the
    swap was undone, nothing was deleted."""

    def __init__(self, final: Path):
        super().__init__(
            f"{final}: was replaced by another entry while mixup replaced it (another process renames entries "
            "there); nothing was replaced or deleted: run again when nothing else renames it"
        )


def _swap_directory(tmp: Path, final: Path, checked) -> None:
    """Put the directory ``tmp`` at ``final`` in place of the entry checked
    (identity ``checked``), which ends under a partial name, removed with it.

    A directory cannot be renamed over an existing entry: one atomic swap
    where the system has it, elsewhere old aside, then new in. What the swap
    took from ``final`` is compared with what was checked; another entry (a
    process renaming directories meanwhile) is swapped back and the commit
    refused, so nothing that was not checked is ever removed."""
    replaced = ReplacedMeanwhile(final)
    if exchange(tmp, final):
        if _ident(tmp) != checked:
            exchange(tmp, final)  # undo: the entry taken goes back where it was
            raise replaced
        return
    aside = _old_aside_path(final)
    remove(aside)
    os.rename(final, aside)
    if _ident(aside) != checked:
        os.rename(aside, final)
        raise replaced
    test_pause("old-aside")
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise


def _finish(final: Path) -> None:
    """The last step: what the run left beside OUT (the journal, an old
    directory) goes, the commit record last."""
    record = commit_record_path(final)
    for path in partials(final, with_lock=False):
        if path != record:
            remove(path)
    test_pause("cleaned")
    remove(record)
    _sync_dir(final.parent)


def recover(final: Path) -> str | None:
    """Finish or roll back the commit of a run killed while committing ``final``.

    Returns (and logs, as a warning) what was done, or None when there was
    no half-done commit, or when a run is committing it right now.
    """
    final = Path(final)
    record = commit_record_path(final)
    try:
        os.lstat(record)
    except OSError:
        return None  # none, or the directory cannot be searched: the run's own checks say so in words
    lock = RunLock(final)
    try:
        lock.acquire()
    except (OutputError, OSError):
        return None  # a live run holds it (and finishes its own commit), or the directory is read-only
    try:
        if beside.lstat(record) is None:
            return None
        message = _recover_locked(final, record)
    except OSError as exc:
        message = (
            f"{final}: found a half-done commit but could not finish it ({exc}); check the directory's permissions"
        )
    finally:
        lock.release()
    log.warning("%s", message)
    return message


def _read_record(record: Path):
    """(new output, new sidecar) identities the record names, or None when it
    is not a record mixup wrote: a link, FIFO, device or directory, too
    large, not JSON, or identities that are not two integers (or null)."""
    try:
        steps = json.loads(beside.read_regular(record, RECORD_LIMIT).decode("utf-8"))
        found = steps["new_output"], steps["new_sidecar"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for value in found:
        if value is not None and not (
            isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)
        ):
            return None
    return found


def _recover_locked(final: Path, record: Path) -> str:
    found = _read_record(record)
    if found is None:
        st = beside.lstat(record)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return f"{final}: ignored a directory at the name of mixup's commit record {record.name}; remove it"
        remove(record)  # written by a rename once complete: damaged, or planted, by something else
        return f"{final}: removed an unreadable commit record; {final.name} is as it was"
    new_output, new_sidecar = found
    sidecar, sidecar_tmp = sidecar_names(final)
    partial = partial_path(final)
    if new_output is not None and _ident(final) == new_output:
        # The point of no return was passed: go forward.
        if _ident(sidecar) != new_sidecar and _ident(sidecar_tmp) == new_sidecar:
            os.replace(sidecar_tmp, sidecar)
            _sync_dir(final.parent)
        if _ident(sidecar) != new_sidecar:
            raise OSError(errno.ENOENT, f"the new sidecar {sidecar_tmp.name} is missing")
        _finish(final)
        return (
            f"{final}: finished the commit of a run stopped while putting it in place: "
            f"the new output and its sidecar are there now"
        )
    aside = _old_aside_path(final)
    if not (final.exists() or final.is_symlink()) and (aside.exists() or aside.is_symlink()):
        os.rename(aside, final)  # the old directory was set aside, the new not yet in
    remove(record)
    _sync_dir(final.parent)
    return (
        f"{final}: a run was stopped before replacing it, which stays as it was; "
        f"its finished output waits as {partial.name}: rerun with --resume to put it in place, "
        "or without --resume to discard it"
    )


_reached: dict[str, int] = {}


def test_pause(stage: str) -> None:
    """A test hook, inert unless ``MIXUP_TEST_PAUSE=STAGE[@N]:FLAG`` is set:
    the N-th time (default: the first) the run reaches ``stage``, it creates
    the file FLAG and waits (at most 60 s) until FLAG is removed, so that a
    test can signal or kill the process at exactly that instant. Stages:
    ``progress`` (rows written), ``staged`` (sidecar staged), ``commit-record``,
    ``checked`` (OUT's contents checked, not yet replaced), ``old-aside`` (no RENAME_EXCHANGE only), ``output-in-place``, ``sidecar-in-place``, ``cleaned``, ``committed``,
    ``finished`` (summary printed), and for a set ``manifest-staged`` (OUTDIR's manifest
    staged, not yet renamed)."""
    spec = os.environ.get("MIXUP_TEST_PAUSE")
    if not spec:
        return
    where, _, flag = spec.partition(":")
    name, _, nth = where.partition("@")
    if name != stage:
        return
    _reached[stage] = _reached.get(stage, 0) + 1
    if _reached[stage] != int(nth or 1) or not flag:
        return
    import time

    Path(flag).touch()
    deadline = time.monotonic() + 60
    while os.path.exists(flag) and time.monotonic() < deadline:
        stopping.check()  # a stop asked for here is taken, as at any safe point (not once the commit began)
        time.sleep(0.005)


# ---------------------------------------------------------------- before any work


def check_replaceable(final: Path, sidecar: Path, directory: bool) -> None:
    """Refuse, before any work, an OUT that the final commit must not or
    could not replace (``directory``: the output is a directory).

    ``--overwrite`` replaces only what a mixup run made: an existing
    directory must hold nothing but a previous output's own files (those
    its sidecar lists, or a Zarr store with mixup's attributes). A single
    file OUT is the user's to name and is replaced whatever it holds.
    In a sticky directory (``/tmp``) only a file's owner may replace it.
    """
    final, sidecar = Path(final), Path(sidecar)
    if final.exists() and not final.is_symlink():  # a link is replaced itself, never what it points to
        if final.is_dir() != directory:
            kind = "directory" if final.is_dir() else "file"
            raise OutputError(f"{final}: exists and is a {kind}; remove it or choose another output path")
        if directory:
            foreign = foreign_entries(final, sidecar)
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise OutputError(
                    f"{final}: --overwrite would delete {shown}, which no mixup run wrote there; "
                    "move them away or choose another output path (--overwrite replaces only a previous mixup output)"
                )
    for path in (final, sidecar):
        _check_sticky(path)


def _check_sticky(path: Path) -> None:
    try:
        st, parent = os.lstat(path), os.stat(path.parent)
    except OSError:
        return
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is None or not parent.st_mode & stat.S_ISVTX or uid in (0, st.st_uid, parent.st_uid):
        return
    raise OutputError(
        f"{path}: belongs to another user in the sticky directory {path.parent.resolve()}, where only its "
        "owner may replace it (the final rename would be refused); choose another output path"
    )


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _recorded_files(sidecar: Path) -> set[str]:
    """Files of the output as its sidecar lists them, relative to the output."""
    record = _read_json(sidecar)
    entry = record.get("output") if isinstance(record, dict) else None
    if not isinstance(entry, dict):
        return set()
    found = set()
    base = Path(str(entry.get("path", "")))
    for item in entry.get("files") or []:
        try:
            found.add(Path(str(item["path"])).relative_to(base).as_posix())
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _mixup_zarr(root: Path) -> bool:
    meta = _read_json(root / "zarr.json")
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and "run_id" in attrs and "mixup_cli_version" in attrs


def foreign_entries(final: Path, sidecar: Path) -> list[str]:
    """What in the directory ``final`` a previous mixup output did not write
    (relative paths; empty directories count for nothing)."""
    final = Path(final)
    recorded = _recorded_files(sidecar)
    zarr_store = _mixup_zarr(final)
    foreign = []
    for path in sorted(final.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(final)
        name = rel.as_posix()
        if name in recorded:
            continue
        # The store's own metadata and the files under its arrays (chunks come and go).
        if zarr_store and (
            name == "zarr.json" or (len(rel.parts) > 1 and (final / rel.parts[0] / "zarr.json").is_file())
        ):
            continue
        foreign.append(name)
    return foreign


def stage_text(tmp: Path, text: str) -> Path:
    """Write ``text`` to the temporary file ``tmp``, flushed to disk; return ``tmp``."""
    tmp = Path(tmp)
    try:
        # A new file, never through a link planted at the temporary name.
        with os.fdopen(beside.create_file(tmp), "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except FileExistsError:
        raise OutputError(
            f"{tmp}: another process keeps creating files at this name beside the output; "
            "choose an output directory only you can write to"
        ) from None
    except BaseException:
        remove(tmp)
        raise
    return tmp
