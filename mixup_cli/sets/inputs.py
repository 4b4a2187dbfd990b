"""A set's inputs as given (arguments, ``--inputs-from``) and ``--shard I/N``
(or the part a job array's scheduler gives: ``slurm``, ``k8s/N``)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io.braces import expand_pattern, is_pattern


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


TAR_SUFFIXES = (".tar",)
# Compressed shards: named here so that a folder of them is told what to do (io/webdataset.py refuses them).
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz")


def tar_shards(path: str | Path) -> list[Path] | None:
    """The WebDataset shards directly inside folder ``path`` (``.tar``, and
    ``.tar.gz``/``.tgz`` so that they are refused by name, unless the ``.tar``
    that ``gunzip -k`` makes of them is there too), sorted by name,
    when it is a folder of shards: it holds some and no ``.npy`` file, and
    is no Zarr store. None for any other path."""
    path = Path(path)
    if path.suffix.lower() == ".zarr" or not path.is_dir():
        return None
    try:
        entries = list(path.iterdir())
    except OSError:
        return None
    if any(p.suffix == ".npy" for p in entries):
        return None
    names = {p.name for p in entries}
    found = sorted(
        p
        for p in entries
        if p.name.lower().endswith(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES)
        and p.is_file()
        and _plain_name(p.name) not in names  # gunzip -k left the .tar beside it: that one is read
    )
    return found or None


def _plain_name(name: str) -> str | None:
    """``a.tar.gz``/``a.tgz`` -> ``a.tar`` (what ``gunzip -k`` writes); None for other names."""
    lower = name.lower()
    if lower.endswith(".tar.gz"):
        return name[: -len(".gz")]
    if lower.endswith(".tgz"):
        return name[: -len(".tgz")] + ".tar"
    return None


def folder_shards(path: str | Path) -> list[Path] | None:
    """The shards of a folder that is a set (Parquet files, or WebDataset ``.tar`` shards); None otherwise."""
    return parquet_shards(path) or tar_shards(path)


def expand_folders(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with each brace pattern replaced by the paths it names
    (``expand_pattern``) and each folder of Parquet or WebDataset shards by
    its files, in order."""
    found = []
    for path in paths:
        for one in expand_pattern(path):
            found += folder_shards(one) or [Path(one)]
    return found


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
    that is a folder of Parquet or WebDataset (``.tar``) shards is the set of
    its files; a brace pattern (``shard-{000..099}.tar``) is a set of the
    paths it names, as a list is, whatever their number."""
    if n_inputs == 1 and first is not None and (folder_shards(first) or is_pattern(first)):
        return True
    return n_inputs >= 2 or inputs_from is not None or shard is not None


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_SCHEDULER = re.compile(r"^\s*(slurm|k8s|kubernetes)\s*(?:/(.*))?$", re.IGNORECASE)
_COUNT = re.compile(r"^\s*(\d+)\s*$")


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (``--shard I/N``): ``0 <= index < count``.
    ``given``: how ``--shard`` was spelled when a scheduler chose the part
    (``slurm``), for messages only; the part is recorded as ``I/N``."""

    index: int
    count: int
    given: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def spelled(self) -> str:
        """``--shard``'s value as the user gave it: ``3/16``, or ``slurm (part 3/16)``."""
        return f"{self.given} (part {self})" if self.given else str(self)

    def outputs(self, n_outputs: int) -> range:
        """The contiguous outputs this part writes: ``[floor(I*S/N), floor((I+1)*S/N))``.
        Every output goes to exactly one part; with N > S some parts get none."""
        return range(self.index * n_outputs // self.count, (self.index + 1) * n_outputs // self.count)

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count}


WHOLE = Part(0, 1)

_FORMS = "I/N with integers 0 <= I < N (e.g. 0/4), slurm (a Slurm job array's task) or k8s/N (a Kubernetes Indexed Job)"


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> Part:
    """``--shard`` as a Part (None: the whole set, 0/1): ``I/N``; ``slurm``,
    the task of a Slurm job array (``SLURM_ARRAY_TASK_*``); ``k8s/N`` (or
    ``kubernetes/N``), the completion index of a Kubernetes Indexed Job of
    N completions (``JOB_COMPLETION_INDEX``). ``environ``: the variables to
    read (default ``os.environ``). A variable missing or malformed is refused,
    never taken as part 0."""
    if text is None:
        return WHOLE
    scheduler = _SCHEDULER.match(str(text))
    if scheduler:
        env = os.environ if environ is None else environ
        name, rest = scheduler.group(1).lower(), scheduler.group(2)
        if name == "slurm":
            if rest is not None:
                raise ParameterError(
                    f"--shard {text}: slurm takes N from SLURM_ARRAY_TASK_COUNT; write --shard slurm, "
                    "or --shard $SLURM_ARRAY_TASK_ID/N for some tasks of an array of N (--array=3,7)",
                    "--shard",
                )
            return _slurm_part(env)
        return _k8s_part(env, name, rest)
    match = _SHARD.match(str(text))
    if not match:
        raise ParameterError(f"--shard must be {_FORMS}; got {text!r}", "--shard")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ParameterError(f"--shard {text}: N must be at least 1", "--shard")
    if index >= count:
        raise ParameterError(f"--shard {text}: I must be below N (parts are numbered 0 to {count - 1})", "--shard")
    return Part(index, count)


def _variable(env: Mapping[str, str], name: str, spelled: str, fix: str, default: int | None = None) -> int:
    """The non-negative integer in variable ``name``; refused in one line when missing or malformed."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        if default is not None:
            return default
        raise ParameterError(f"--shard {spelled}: {name} is not set; {fix}", "--shard")
    found = _COUNT.match(raw)
    if not found:
        raise ParameterError(f"--shard {spelled}: {name}={raw!r} is not a non-negative integer; {fix}", "--shard")
    return int(found.group(1))


_SLURM_FIX = "run it as a task of a Slurm job array (sbatch --array=0-15 ...), or give --shard I/N"


def _slurm_part(env: Mapping[str, str]) -> Part:
    """A Slurm array task's part: I = (SLURM_ARRAY_TASK_ID - MIN) / STEP, N = SLURM_ARRAY_TASK_COUNT.
    Arrays that do not start at 0 (``--array=1-16``) and regular steps
    (``--array=0-30:2``) map onto parts 0 to N-1 in index order; a list of
    indices that is not a range (``--array=1,2,7``) is refused."""
    task, count, low, high = (
        _variable(env, f"SLURM_ARRAY_TASK_{what}", "slurm", _SLURM_FIX) for what in ("ID", "COUNT", "MIN", "MAX")
    )
    step = _variable(env, "SLURM_ARRAY_TASK_STEP", "slurm", _SLURM_FIX, default=1)
    if count < 1 or step < 1 or high < low or high - low != (count - 1) * step:
        raise ParameterError(
            f"--shard slurm: the job array is not a range of indices (SLURM_ARRAY_TASK_MIN={low}, "
            f"SLURM_ARRAY_TASK_MAX={high}, SLURM_ARRAY_TASK_STEP={step}, SLURM_ARRAY_TASK_COUNT={count}); "
            "submit it as --array=FIRST-LAST (or FIRST-LAST:STEP), or give --shard $SLURM_ARRAY_TASK_ID/N "
            "(N the parts of the whole set)",
            "--shard",
        )
    if not low <= task <= high or (task - low) % step:
        raise ParameterError(
            f"--shard slurm: SLURM_ARRAY_TASK_ID={task} is not an index of the job array "
            f"{low}-{high}:{step}; run it as a task of that array, or give --shard I/N",
            "--shard",
        )
    return Part((task - low) // step, count, given="slurm")


def _k8s_part(env: Mapping[str, str], name: str, rest: str | None) -> Part:
    """A Kubernetes Indexed Job's part: I = JOB_COMPLETION_INDEX, N from ``k8s/N`` (the Job's completions)."""
    found = _COUNT.match(rest) if rest is not None else None
    if found is None or int(found.group(1)) < 1:
        got = f"; got {name}/{rest}" if rest is not None else ""
        raise ParameterError(
            f"--shard {name} needs N, the Job's spec.completions: write --shard {name}/N (e.g. {name}/16 "
            f"with completions: 16){got}",
            "--shard",
        )
    count = int(found.group(1))
    spelled = f"{name}/{count}"
    index = _variable(
        env,
        "JOB_COMPLETION_INDEX",
        spelled,
        "run it in a Kubernetes Job with completionMode: Indexed, or give --shard I/N",
    )
    if index >= count:
        raise ParameterError(
            f"--shard {spelled}: JOB_COMPLETION_INDEX={index} is not below N={count}; "
            "make N the Job's spec.completions",
            "--shard",
        )
    return Part(index, count, given=spelled)


def part_of(output: int, n_outputs: int, count: int) -> int:
    """The part of ``count`` that writes output ``output`` (the inverse of ``Part.outputs``)."""
    # The largest I with floor(I*S/N) <= k.
    return ((output + 1) * count - 1) // n_outputs


def check_part_seed(part: Part, seed: int | None) -> None:
    """Parts run apart must share one plan: a drawn seed would differ per part."""
    if part.count > 1 and seed is None:
        raise ParameterError(f"--shard {part.spelled()} needs --seed: every part must use the same plan", "--seed")
