"""``ConcatReader``: the inputs of a set read as one dataset, their concatenation.

Global row ``r`` of the set is row ``r - offset[k]`` of input ``k``. Reads
that cross inputs are served piece by piece from each input's own reader
(so each format keeps its fast paths); ``take`` groups the rows by input.

Readers are opened when first needed and kept in a small LRU (``max_open``):
a set of thousands of shards never holds thousands of file handles (or
inflated ``.npz`` scratch files) at once, and memory beyond the open
readers is the layout's O(S) metadata. Walking the plan's blocks touches
one or two inputs at a time; class pairings' partners (``take``) may touch
every input, opening each in turn.

``input_offsets`` (the first row of each input, then the total rows) is
what ``run/gather.take`` looks up, by name, to cut the ranges it reads at
the inputs' boundaries: a take opens only the inputs holding its rows.

An input is checked as it is opened against what the layout says of it
(rows, and the row shape and dtype of each array used): an input rewritten
after ``inspect_inputs`` (or after a part recorded the set's layout,
``layout_record``) is refused, naming it, rather than read as it now is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError
from mixup_cli.io import axes, open_reader
from mixup_cli.io.base import ArraySpec, Reader
from mixup_cli.sets.layout import SetLayout
from mixup_cli.targets.named import STRING_KINDS

DEFAULT_MAX_OPEN = 16  # ~3 descriptors each; a 16-shard set then never reopens (about 1 ms an input)


def _unified_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """One dtype for an array across inputs: theirs if they agree; strings
    stored differently (lengths, bytes or text) are shown as Python objects."""
    first = dtypes[0]
    if all(d == first for d in dtypes):
        return first
    return np.dtype(object)


def _same_dtype(a: np.dtype, b: np.dtype) -> bool:
    # String labels are read as text whatever their storage (lengths, bytes or text).
    return a == b or (a.kind in STRING_KINDS and b.kind in STRING_KINDS)


class ConcatReader(Reader):
    """The set's inputs as one Reader (read-only, rows in the given order).
    Used from one thread at a time, like the readers it holds."""

    def __init__(
        self,
        layout: SetLayout,
        *,
        opener: Callable[[Path], Reader] | None = None,
        scratch_prefix: Path | None = None,
        fast: bool = True,
        max_open: int = DEFAULT_MAX_OPEN,
    ):
        super().__init__(Path(layout.label))  # messages name the set; layout.locate_rows names the input
        self.layout = layout
        self._custom_opener = opener
        self._scratch_prefix, self._fast = scratch_prefix, fast
        self._max_open = max(1, int(max_open))
        self._open: OrderedDict[int, Reader] = OrderedDict()
        self._files: dict[int, list[Path]] = {}  # of inputs opened, recorded before they close
        # Readers that open again after close() (folders of images, WebDataset shards: their
        # listing, as long to make as it is to read a block, is kept; descriptors and threads go).
        self._closed: dict[int, Reader] = {}
        self._offsets = layout.offsets
        self.opened = 0  # readers opened so far (tests, and a measure of churn)
        formats = layout.formats
        self.format_name = formats[0] if len(formats) == 1 else "+".join(formats)
        self._specs = {}
        for key in layout.keys:
            specs = [s.specs[key] for s in layout.shards]
            self._specs[key] = ArraySpec(
                (layout.n_rows,) + specs[0].row_shape, _unified_dtype([s.dtype for s in specs])
            )
        self._shared_specs: dict[str, ArraySpec] = {}
        if layout.class_names is not None:  # folders of images: their class folders (the same in every input)
            self.class_names = layout.class_names
        if layout.image_parameters() is not None:  # how the images were decoded, for the sidecar
            self.image_parameters = layout.image_parameters

    # --- readers ------------------------------------------------------------

    def _reader(self, k: int) -> Reader:
        reader = self._open.get(k)
        if reader is not None:
            self._open.move_to_end(k)
            return reader
        while len(self._open) >= self._max_open:
            old, evicted = self._open.popitem(last=False)
            self._close_one(old, evicted)
        path = self.layout.shards[k].path
        reader = self._closed.pop(k, None)
        if reader is not None:
            self._open[k] = reader
            return reader
        if self._custom_opener is not None:
            reader = self._custom_opener(path)
        else:
            reader = axes.as_matlab_shows(
                open_reader(path, self._scratch_prefix, fast=self._fast, images=self.layout.image_options)
            )
        self.opened += 1
        try:
            self._check_unchanged(k, reader)
        except BaseException:
            reader.close()
            raise
        self._open[k] = reader
        return reader

    def _check_unchanged(self, k: int, reader: Reader) -> None:
        """Input ``k`` as opened now has the rows, row shapes and dtypes the
        layout records of it: else it changed after the set was checked."""
        shard = self.layout.shards[k]
        for key, want in shard.specs.items():
            try:
                got = reader.spec(key)
            except KeyError:
                got = None
            if got is None:
                now = f"has no array '{key}'"
            elif got.rows != shard.rows:
                now = f"has {got.rows} rows of '{key}', not the {shard.rows} it had"
            elif tuple(got.row_shape) != tuple(want.row_shape):
                now = f"has rows of shape {tuple(got.row_shape)} in '{key}', not {tuple(want.row_shape)}"
            elif not _same_dtype(np.dtype(got.dtype), np.dtype(want.dtype)):
                now = f"has '{key}' as {np.dtype(got.dtype)}, not {np.dtype(want.dtype)}"
            else:
                continue
            raise InputError(
                f"{shard.path}: {now} when the set's inputs were checked; it changed while the set was being "
                "written: run the part again, which checks the inputs again"
            )

    @property
    def input_offsets(self) -> np.ndarray:
        """The set's row of each input's first row, then the total rows (S + 1
        entries): ``run/gather.take`` cuts its ranges there (looked up by name)."""
        return self._offsets

    def _close_one(self, k: int, reader: Reader) -> None:
        try:
            self._files[k] = list(reader.files())
        finally:
            reader.close()
        if getattr(reader, "reopens_after_close", False):
            self._closed[k] = reader

    def _pieces(self, start: int, stop: int):
        """(input k, local start, local stop, offset in the result) over [start, stop)."""
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        at = start
        while at < stop:
            lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
            end = min(stop, hi)
            yield k, at - lo, end - lo, at - start
            at = end
            k += 1

    # --- Reader -------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self.layout.keys) + list(self.layout.shared)

    def spec(self, key: str) -> ArraySpec:
        if key in self._specs:
            return self._specs[key]
        if key in self.layout.shared:
            if key not in self._shared_specs:
                self._shared_specs[key] = self._reader(0).spec(key)
            return self._shared_specs[key]
        raise KeyError(key)

    def _check_range(self, key: str, start: int, stop: int) -> None:
        n = self.spec(key).rows
        if not (0 <= start <= stop <= n):
            raise IndexError(f"rows {start}:{stop} of '{key}' outside 0:{n}")

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        if key in self.layout.shared:  # the same in every input: the first one's
            return self._reader(0).read(key, start, stop)
        self._check_range(key, start, stop)
        spec = self.spec(key)
        out = np.empty((stop - start,) + spec.row_shape, dtype=spec.dtype)
        for k, lo, hi, at in self._pieces(start, stop):
            piece = self._reader(k).read(key, lo, hi)
            out[at : at + hi - lo] = self._as_set_dtype(piece, spec.dtype)
        return out

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if key in self.layout.shared or self.spec(key).dtype.kind in STRING_KINDS:
            np.copyto(out[: stop - start], self.read(key, start, stop))
            return
        self._check_range(key, start, stop)
        for k, lo, hi, at in self._pieces(start, stop):
            # out[at:] is C-contiguous where out is: each reader's fast path still applies.
            self._reader(k).read_into(key, lo, hi, out[at:])

    @staticmethod
    def _as_set_dtype(piece: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if dtype.kind == "O" and piece.dtype.kind != "O":
            return piece.astype(object)
        return piece

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        if key in self.layout.shared:
            return self._reader(0).take(key, rows)
        rows = np.asarray(rows, dtype=np.int64)
        spec = self.spec(key)
        out = np.empty((len(rows),) + spec.row_shape, dtype=spec.dtype)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= spec.rows:
            raise IndexError(f"rows of '{key}' outside 0:{spec.rows}")
        in_order = bool(np.all(rows[1:] >= rows[:-1]))  # partners come sorted: no reordering
        order = None if in_order else np.argsort(rows, kind="stable")
        sorted_rows = rows if order is None else rows[order]
        owner = np.searchsorted(self._offsets, sorted_rows, side="right") - 1
        cuts = [0, *(np.flatnonzero(np.diff(owner)) + 1).tolist(), len(rows)]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            k = int(owner[lo])
            piece = self._as_set_dtype(self._reader(k).take(key, sorted_rows[lo:hi] - self._offsets[k]), spec.dtype)
            if order is None:
                out[lo:hi] = piece
            else:
                out[order[lo:hi]] = piece
        return out

    def row_names(self, rows) -> list[str] | None:
        """The names of set rows ``rows`` (``INPUT:NAME``, an input's own
        ``row_names``: image paths, sample keys), for WebDataset outputs'
        lineage; None when an input has no names (arrays: rows are numbers)."""
        rows = np.asarray(rows, dtype=np.int64)
        owner = np.searchsorted(self._offsets, rows, side="right") - 1
        found: list[str] = [""] * len(rows)
        for k in np.unique(owner).tolist():
            reader = self._reader(k)
            names = getattr(reader, "row_names", None)
            if names is None:
                return None
            picked = np.flatnonzero(owner == k)
            prefix = self.layout.shards[k].path.name
            for i, name in zip(picked.tolist(), names(rows[picked] - self._offsets[k])):
                found[i] = f"{prefix}:{name}"
        return found

    def describe(self, key: str) -> dict:
        info = dict(self._reader(0).describe(key))
        info["inputs"] = len(self.layout.shards)
        return info

    def chunk_rows(self, key: str) -> int | None:
        return self._reader(0).chunk_rows(key)

    def take_inflates(self, key: str) -> bool:
        # Asked once per run (scratch.wanted): each input answers for itself.
        return any(self._reader(k).take_inflates(key) for k in range(len(self.layout.shards)))

    def classes_present(self, key: str) -> tuple[int, ...] | None:
        """The set's sorted class labels of ``key`` when ``inspect_inputs`` read
        them as it checked the inputs (``encoding.find_classes`` then reads nothing)."""
        return self.layout.classes if key == self.layout.classes_key else None

    def take_scatters(self) -> bool:
        # Partners by index fall in any input: past max_open, every take reopens inputs.
        return len(self.layout.shards) > self._max_open

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        # Each input passed its own reader's checks in inspect_inputs.
        return super().require(key, option, kinds)

    def input_files(self, k: int) -> list[Path]:
        """The files input ``k`` reads (itself, and what it links to): its own
        output's sidecar hashes these only, never the whole set's."""
        if k in self._open:
            return list(self._open[k].files())
        if k not in self._files:
            self._reader(k)
        return list(self._open[k].files()) if k in self._open else list(self._files[k])

    def files(self) -> list[Path]:
        """Every input's files in input order (an input never opened: itself)."""
        found, seen = [], set()
        for k, shard in enumerate(self.layout.shards):
            listed = self._open[k].files() if k in self._open else self._files.get(k, [shard.path])
            for path in listed:
                if str(path) not in seen:
                    seen.add(str(path))
                    found.append(Path(path))
        return found

    def __getstate__(self):
        # Pickled for another process (a Dask worker): the layout travels, open
        # readers do not; the copy opens its own as it reads.
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        state["_closed"] = {}
        return state

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        while self._open:
            k, reader = self._open.popitem(last=False)
            self._close_one(k, reader)
        self._closed.clear()
