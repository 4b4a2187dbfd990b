"""Nothing half-written: outputs are built under a temporary name beside the
target and renamed into place only when complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mixup_cli.errors import OutputError

PARTIAL_SUFFIX = ".mixup-partial"


def partial_path(final: Path) -> Path:
    """Hidden, clearly named, and without the target's extension, so it is
    never mistaken for output by a glob such as ``*.h5``."""
    final = Path(final)
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fsync(path: Path) -> None:
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``final``; replace an existing one only if allowed."""
    tmp, final = Path(tmp), Path(final)
    _fsync(tmp)
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
            return
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(final: Path, text: str, overwrite: bool = True) -> None:
    """Write a small text file atomically."""
    tmp = partial_path(final)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    commit(tmp, final, overwrite)
