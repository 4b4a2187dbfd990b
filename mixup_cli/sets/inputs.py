"""A set's inputs as given (arguments, ``--inputs-from``) and ``--shard I/N``."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mixup_cli.errors import InputError, ParameterError


def read_list(text: Iterable[str], base: Path | None, label: str) -> list[Path]:
    """Paths from the lines of a list: one per line, surrounding blanks
    stripped, blank lines and lines starting with ``#`` skipped. Relative
    paths are taken relative to ``base`` (the list file's folder; None:
    the current directory, for stdin). A ``#`` later in a line is part of
    the path: file names may hold one."""
    found = []
    for number, line in enumerate(text, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "\0" in entry:
            raise InputError(f"{label}: line {number} holds a NUL byte; one path per line")
        path = Path(entry)
        if base is not None and not path.is_absolute():
            path = base / path
        found.append(path)
    return found


PARQUET_SUFFIXES = (".parquet", ".pq")


def parquet_shards(path: str | Path) -> list[Path] | None:
    """The Parquet files directly inside folder ``path``, sorted by name
    (``train-00000-of-00003.parquet``, ...), when it is a folder of Parquet
    shards: it holds some and no ``.npy`` file, and is neither a Zarr store
    nor a ``datasets`` folder. None for any other path."""
    path = Path(path)
    if path.suffix.lower() == ".zarr" or not path.is_dir():
        return None
    try:
        entries = list(path.iterdir())
    except OSError:
        return None
    names = {p.name for p in entries}
    if names & {"dataset_info.json", "dataset_dict.json"} or any(p.suffix == ".npy" for p in entries):
        return None
    found = sorted(p for p in entries if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
    return found or None


def expand_folders(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with each folder of Parquet shards replaced by its files, in order."""
    return [shard for path in paths for shard in (parquet_shards(path) or [Path(path)])]


def collect_inputs(
    arguments: Iterable[str | Path], inputs_from: str | Path | None = None, stdin: TextIO | None = None
) -> list[Path]:
    """The set's inputs in order: the arguments first, then the lines of
    ``inputs_from`` (``-``: standard input), so a list never meets the
    shell's argument limit (ARG_MAX)."""
    paths = [Path(a) for a in arguments]
    if inputs_from is not None:
        if str(inputs_from) == "-":
            paths += read_list(stdin if stdin is not None else sys.stdin, None, "--inputs-from -")
        else:
            listing = Path(inputs_from)
            try:
                with open(listing, encoding="utf-8") as fh:
                    paths += read_list(fh, listing.parent, str(listing))
            except FileNotFoundError:
                raise ParameterError(
                    f"--inputs-from {listing}: no such file; check the path", "--inputs-from"
                ) from None
            except IsADirectoryError:
                raise ParameterError(
                    f"--inputs-from {listing}: is a directory; pass a file listing one input per line", "--inputs-from"
                ) from None
            except UnicodeDecodeError:
                raise ParameterError(
                    f"--inputs-from {listing}: is not UTF-8 text; pass a file listing one input per line",
                    "--inputs-from",
                ) from None
            except OSError as exc:
                raise ParameterError(
                    f"--inputs-from {listing}: cannot read it ({exc.strerror or exc})", "--inputs-from"
                ) from None
    if not paths:
        where = f" (--inputs-from {inputs_from} lists none)" if inputs_from is not None else ""
        raise ParameterError(f"no inputs given{where}; pass IN... OUTDIR or --inputs-from FILE", "IN")
    return expand_folders(paths)


def is_set_form(
    n_inputs: int, inputs_from: str | Path | None = None, shard: str | None = None, first: Path | None = None
) -> bool:
    """Whether ``augment IN... OUT`` names a set (OUT a directory of outputs)
    or one output: two inputs or more, ``--inputs-from`` or ``--shard``. One
    input is one output whatever OUT's spelling: ``data/ mixed/`` (the slash
    a shell's completion adds) writes the ``.npy`` directory ``mixed`` as
    ``data/ mixed`` does, and ``in.h5 mixed/`` likewise. One input ``first``
    that is a folder of Parquet shards is the set of its files."""
    if n_inputs == 1 and first is not None and parquet_shards(first):
        return True
    return n_inputs >= 2 or inputs_from is not None or shard is not None


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (``--shard I/N``): ``0 <= index < count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def outputs(self, n_outputs: int) -> range:
        """The contiguous outputs this part writes: ``[floor(I*S/N), floor((I+1)*S/N))``.
        Every output goes to exactly one part; with N > S some parts get none."""
        return range(self.index * n_outputs // self.count, (self.index + 1) * n_outputs // self.count)

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count}


WHOLE = Part(0, 1)


def parse_shard(text: str | None) -> Part:
    """``--shard I/N`` as a Part (None: the whole set, 0/1)."""
    if text is None:
        return WHOLE
    match = _SHARD.match(str(text))
    if not match:
        raise ParameterError(f"--shard must be I/N with integers 0 <= I < N (e.g. 0/4), got {text!r}", "--shard")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ParameterError(f"--shard {text}: N must be at least 1", "--shard")
    if index >= count:
        raise ParameterError(f"--shard {text}: I must be below N (parts are numbered 0 to {count - 1})", "--shard")
    return Part(index, count)


def part_of(output: int, n_outputs: int, count: int) -> int:
    """The part of ``count`` that writes output ``output`` (the inverse of ``Part.outputs``)."""
    # The largest I with floor(I*S/N) <= k.
    return ((output + 1) * count - 1) // n_outputs


def check_part_seed(part: Part, seed: int | None) -> None:
    """Parts run apart must share one plan: a drawn seed would differ per part."""
    if part.count > 1 and seed is None:
        raise ParameterError(f"--shard {part} needs --seed: every part must use the same plan", "--seed")
