"""Names beside OUT, made, opened and removed without following links.

Everything mixup keeps beside an output (partial files, journals, locks,
staged sidecars, commit records, scratch copies, preview pictures) lives in
a directory other people may write to. A link or special file planted at
one of those names must never redirect a write, a rename or a delete
outside it, nor make a read hang. So every such name is derived from OUT
(never read from a file), and is handled here:

- created only where nothing is (``O_CREAT | O_EXCL | O_NOFOLLOW``, or
  ``mkdir``), after removing what was there (a link itself, never its
  target; a real directory with ``shutil.rmtree``, which does not follow
  links);
- opened only when it is what mixup makes there: a regular file (a
  directory), not a link (``O_NOFOLLOW``), checked on the open descriptor;
- read back only up to a size that fits what mixup writes there.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class NotPlain(OSError):
    """Something else than mixup makes sits at one of its names (a link, a
    FIFO, a device, a directory where a file belongs, or too large)."""


def lstat(path) -> os.stat_result | None:
    """What is at ``path`` itself (a link is not followed), or None."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def ident(path) -> tuple[int, int] | None:
    """(device, inode) of the entry at ``path`` itself, or None."""
    st = lstat(path)
    return None if st is None else (st.st_dev, st.st_ino)


def kind(mode: int) -> str:
    """The kind of a file, in words."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def clear(path) -> None:
    """Remove whatever is at ``path``: a link or special file itself (never
    what it points to), a file, or a real directory and what is under it
    (``shutil.rmtree`` does not follow the links it finds)."""
    st = lstat(path)
    if st is None:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def create_file(path, mode: int = 0o644) -> int:
    """A new, empty regular file at ``path`` (what was there removed first),
    opened for writing; the descriptor. Never writes through a link: one
    planted between the removal and the creation makes it fail
    (``FileExistsError``) instead."""
    clear(path)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, mode)


def create_dir(path) -> None:
    """A new, empty directory at ``path`` (what was there removed first);
    ``mkdir`` never follows a link."""
    clear(path)
    os.mkdir(path)


def open_regular(path, flags: int = os.O_RDONLY, mode: int = 0o644, follow: bool = False) -> int:
    """Open the regular file at ``path`` without following a link (unless
    ``follow``: a file mixup only reads, such as a sidecar) and without
    waiting on a FIFO (``NotPlain`` for anything else)."""
    try:
        fd = os.open(path, flags | (0 if follow else NOFOLLOW) | NONBLOCK | CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            st = lstat(path)
            raise NotPlain(exc.errno, f"is {kind(st.st_mode) if st else 'not a regular file'}", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotPlain(errno.EINVAL, f"is {kind(st.st_mode)}", str(path))
        if NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path, limit: int, follow: bool = False) -> bytes:
    """The bytes of the regular file at ``path``, refused (``NotPlain``)
    when it is anything else or larger than ``limit``."""
    fd = open_regular(path, follow=follow)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise NotPlain(errno.EFBIG, f"is {size} bytes, more than the {limit} it can be", str(path))
        chunks, left = [], size + 1
        while left > 0:
            piece = os.read(fd, min(left, 1 << 20))
            if not piece:
                break
            chunks.append(piece)
            left -= len(piece)
        data = b"".join(chunks)
        if len(data) > limit:
            raise NotPlain(errno.EFBIG, f"is more than the {limit} bytes it can be", str(path))
        return data
    finally:
        os.close(fd)


def plain_tree(path) -> bool:
    """Whether ``path`` is a real directory holding only directories and
    regular files (no link, FIFO or device anywhere under it)."""
    st = lstat(path)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return False
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            entry = lstat(os.path.join(root, name))
            if entry is None or not (stat.S_ISDIR(entry.st_mode) or stat.S_ISREG(entry.st_mode)):
                return False
    return True


def plain_file(path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one)."""
    st = lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def same_file(fd: int, path) -> bool:
    """Whether the open descriptor ``fd`` is the entry at ``path`` itself."""
    st, at = os.fstat(fd), lstat(Path(path))
    return at is not None and (st.st_dev, st.st_ino) == (at.st_dev, at.st_ino)
