"""A set's inputs checked against each other, and where their outputs go.

``inspect_inputs`` opens each input once, one at a time, and keeps only
small metadata per input (``ShardInfo``: path, rows, offset, format, the
specs of the arrays used), so memory is O(S) whatever the inputs hold.
Every refusal is one line naming the input (and the array) at fault.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, OutputError, ParameterError
from mixup_cli.io import axes, format_of, open_reader
from mixup_cli.io.base import ArraySpec, layout_options
from mixup_cli.targets import encoding
from mixup_cli.targets.named import STRING_KINDS


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int
    offset: int  # global row of its first row
    format: str
    specs: dict[str, ArraySpec]  # the arrays used, as this input stores them
    # A folder of images or WebDataset shards: how its images were decoded
    # (``images.Reader.image_parameters``), and its class folders' names.
    images: dict | None = None
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SetLayout:
    """The set's inputs in order, and the arrays every one of them has."""

    shards: tuple[ShardInfo, ...]
    keys: tuple[str, ...]  # arrays read: x, y (or an AnnData categorical's codes and categories)
    # Arrays every input holds identically (AnnData categories): shown once, not concatenated.
    shared: tuple[str, ...] = ()
    # How folders of images and WebDataset shards are decoded (``io.images.ImageOptions``; None: the defaults).
    image_options: object | None = None
    # The sorted class labels of ``classes_key`` (y) over the whole set, read while
    # ``inspect_inputs`` had each input open (None: not read, or a label to refuse:
    # the label pass then reads them itself and says which row is wrong).
    classes: tuple[int, ...] | None = None
    classes_key: str | None = None

    @property
    def class_names(self) -> list[str] | None:
        """The class folders' names every input of images shares (checked by ``inspect_inputs``)."""
        names = self.shards[0].class_names
        return list(names) if names is not None else None

    def image_parameters(self) -> dict | None:
        """What the sidecar records of how the set's images were decoded: the
        first input's record, with every input's skipped files (and, for
        WebDataset shards, the samples of the whole set). None unless every
        input is a folder of images or WebDataset shards."""
        if any(s.images is None for s in self.shards):
            return None
        recorded = dict(self.shards[0].images)
        if "samples" in recorded:
            recorded["samples"] = self.n_rows
        if "skipped" in recorded:
            recorded["skipped"] = [item for s in self.shards for item in s.images.get("skipped", [])]
        return recorded

    @property
    def n_rows(self) -> int:
        last = self.shards[-1]
        return last.offset + last.rows

    @property
    def offsets(self) -> np.ndarray:
        """Global first row of each input, and the total rows last (S + 1 entries)."""
        return np.array([s.offset for s in self.shards] + [self.n_rows], dtype=np.int64)

    def locate(self, row: int) -> tuple[int, int]:
        """(input k, its local row) of global row ``row``."""
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        if not (0 <= row < self.n_rows):
            raise IndexError(f"row {row} outside the set's {self.n_rows} rows")
        return k, row - self.shards[k].offset

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(sorted({s.format for s in self.shards}))

    @property
    def label(self) -> str:
        """How messages about the whole set name it (the ConcatReader's ``path``):
        vague rather than wrong, until ``locate_rows`` names the input."""
        first = self.shards[0].path
        more = len(self.shards) - 1
        return str(first) if not more else f"{first} (and {more} more input{'s' if more > 1 else ''} of the set)"


def locate_rows(error: Exception, layout: SetLayout) -> Exception:
    """``error`` with a global row of the set, as the library phrases it
    (``LABEL: 'KEY' row N ...`` or ``LABEL['KEY'] row N``), told as the
    input holding it and its row there. Other messages are kept as they are."""
    text = str(error)
    pattern = re.compile(re.escape(layout.label) + r"(?P<key>: '[^']*'|\['[^']*'\])? row (?P<row>\d+)")
    match = pattern.search(text)
    if match is None:
        return error
    row = int(match.group("row"))
    if not 0 <= row < layout.n_rows:
        return error
    k, local = layout.locate(row)
    told = f"{layout.shards[k].path}{match.group('key') or ''} row {local} (row {row} of the set)"
    new = text[: match.start()] + told + text[match.end() :]
    if isinstance(error, ParameterError):
        return type(error)(new, error.option)
    try:
        return type(error)(new)
    except TypeError:
        return error


def _categorical(keys: set[str], y_key: str) -> bool:
    return y_key not in keys and {f"{y_key}/codes", f"{y_key}/categories"} <= keys


def _used_keys(
    reader, path: Path, x_key: str, y_key: str | None, require_y: bool, groups: str | None = None
) -> tuple[list[str], list[str]]:
    """The arrays of one input taking part: (row arrays, shared arrays); ``groups``: the group ids too."""
    keys, shared = _data_keys(reader, x_key, y_key, require_y)
    if groups is not None:
        if groups not in reader.keys():
            raise ParameterError(f"{path} has no '{groups}'; --groups names the array of group ids", "--groups")
        keys.append(groups)
    return keys, shared


def _data_keys(reader, x_key: str, y_key: str | None, require_y: bool) -> tuple[list[str], list[str]]:
    keys = set(reader.keys())
    if x_key not in keys:
        reader.require(x_key, "--x-key")  # its own message (arrays present, the option)
    if y_key is None:
        return [x_key], []
    if _categorical(keys, y_key):
        return [x_key, f"{y_key}/codes"], [f"{y_key}/categories"]
    if y_key in keys:
        return [x_key, y_key], []
    if require_y:
        reader.require(y_key, "--y-key")
    return [x_key], []


def inspect_inputs(
    paths: Sequence[Path],
    x_key: str = "x",
    y_key: str | None = "y",
    *,
    require_y: bool = True,
    outdir: Path | None = None,
    opener: Callable | None = None,
    groups: str | None = None,
    images=None,
    y_kind: str | None = None,
    on_input: Callable | None = None,
) -> SetLayout:
    """Check the inputs against each other and return the set's layout.

    Refused, naming the input: the same file given twice; an input that is
    OUTDIR or inside it; an input without rows; arrays missing from some
    inputs but not others; row shapes or dtypes that differ from the first
    input's (string labels may differ in storage: fixed lengths, bytes or
    text); AnnData categories that differ; folders of images whose class
    folders differ; x and y of different lengths. ``images``: how folders
    of images and WebDataset shards are decoded (``io.images.ImageOptions``),
    kept in the layout so that every reader of the set decodes them alike.
    ``groups``: the key of the group ids (``--groups``), read as a row array.
    ``y_kind``: given when the run finds y's classes in the data (``--y-kind``
    auto or classes, no ``--num-classes``, soft targets): integer-like labels
    are then read while each input is open, and the set's sorted labels kept
    (``SetLayout.classes``, O(classes)), so that the label pass opens no
    input again. ``on_input(k, reader, info)``: called for each input once it
    is checked, while it is open (``layout_record`` asks its files).
    """
    if opener is None:

        def opener(path):
            return open_reader(path, images=images)

    paths = [Path(p) for p in paths]
    if not paths:
        raise ParameterError("a set needs at least one input", "IN")
    out_real = Path(outdir).resolve() if outdir is not None else None
    seen: dict[tuple[int, int], int] = {}
    folders: dict[Path, Path] = {}  # each folder of inputs resolved once (resolved_path)
    shards: list[ShardInfo] = []
    first_keys: list[str] | None = None
    row_keys: tuple[str, ...] = ()
    first_shared: dict[str, np.ndarray] = {}
    classes: set[int] | None = None  # the labels found so far, while they are being found
    offset = 0
    for k, path in enumerate(paths):
        check_place(path, k, paths, seen, out_real, outdir, folders)
        reader = axes.as_matlab_shows(opener(path))
        try:
            keys, shared = _used_keys(reader, path, x_key, y_key, require_y, groups)
            if first_keys is None:
                first_keys, row_keys = keys + shared, tuple(keys)
            elif keys + shared != first_keys:
                _refuse_keys(path, paths[0], first_keys, keys + shared)
            specs = _shard_specs(reader, path, keys, shared, x_key, first_shared, paths[0], groups)
            if shards:
                _agree(path, specs, paths[0], shards[0].specs)
            rows = specs[x_key].rows
            decoded = getattr(reader, "image_parameters", None)
            names = getattr(reader, "class_names", None) if y_key is not None else None
            info = ShardInfo(
                path,
                rows,
                offset,
                reader.format_name,
                specs,
                decoded() if decoded is not None else None,
                tuple(names) if names is not None else None,
            )
            if shards:
                _same_classes(info, shards[0])
            else:
                classes = set() if _labels_wanted(specs, y_key, y_kind) else None
            if classes is not None and not _add_classes(reader, y_key, rows, classes):
                classes = None  # a label to refuse: the label pass finds it, with its row in the set
            if on_input is not None:
                on_input(k, reader, info)
            shards.append(info)
        finally:
            reader.close()
        offset += rows
    found = tuple(sorted(classes)) if classes is not None else None
    return SetLayout(tuple(shards), row_keys, tuple(first_shared), images, found, y_key if found is not None else None)


def _labels_wanted(specs: dict[str, ArraySpec], y_key: str | None, y_kind: str | None) -> bool:
    """Whether y holds numbers the run takes as class labels to find (every
    input has the first one's dtype and row shape: ``_agree``)."""
    if y_kind is None or y_key not in specs:
        return False  # no classes to find, or labels shown as codes (AnnData categoricals)
    return encoding.wants_classes(specs[y_key].dtype, specs[y_key].row_shape, y_kind)


def _add_classes(reader, y_key: str, rows: int, found: set[int]) -> bool:
    """Add the class labels of one input's ``y_key`` to ``found``, read as
    ``encoding.find_classes`` reads them; False at a label it refuses."""
    for start in range(0, rows, encoding.SCAN_ROWS):
        stopping.check()
        block = reader.read(y_key, start, min(rows, start + encoding.SCAN_ROWS))
        try:
            found.update(encoding.block_classes(block, start, y_key).tolist())
        except InputError:
            return False
    return True


def _same_classes(info: ShardInfo, first: ShardInfo) -> None:
    """Folders of images label their rows by their class folders' names: the
    inputs of a set need the same ones, so that a class number means one class."""
    if info.class_names == first.class_names:
        return
    if info.class_names is None or first.class_names is None:
        has, lacks = (info, first) if info.class_names is not None else (first, info)
        raise InputError(
            f"{info.path}: its classes are named by class folders in {has.path} but not in {lacks.path}; "
            "every input of a set needs the same classes (mix folders of images with folders of images)"
        )
    ours, theirs = set(info.class_names), set(first.class_names)
    other = sorted(ours - theirs) or sorted(theirs - ours)
    if other:
        what = "has" if other[0] in ours else "lacks"
        raise InputError(
            f"{info.path}: {what} the class folder '{other[0]}' ({len(ours)} classes, {first.path} has "
            f"{len(theirs)}); every folder of images in a set needs the same class folders (add the "
            "missing class folder with its images, or take that class out of every input)"
        )


def check_place(
    path: Path, k: int, paths, seen: dict, out_real: Path | None, outdir, folders: dict | None = None
) -> None:
    """Refuse an input given twice (same device and inode), or inside OUTDIR (or holding it)."""
    try:
        st = os.stat(path)
    except OSError:
        st = None  # open_reader says why
    if st is not None:
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            j = seen[ident]
            raise ParameterError(
                f"{path}: is given twice (input {j + 1}, {paths[j]}, is the same file); list each input once", "IN"
            )
        seen[ident] = k
    if out_real is not None:
        real = resolved_path(path, folders) if st is not None and folders is not None else path.resolve()
        if real == out_real or real.is_relative_to(out_real):
            raise ParameterError(f"{path}: is inside the output directory {outdir}; choose another OUTDIR", "OUTDIR")
        if out_real.is_relative_to(real):  # a directory input (.npy files, Zarr) would receive outputs
            raise ParameterError(f"{outdir}: is inside the input {path}; choose another OUTDIR", "OUTDIR")


def resolved_path(path: Path, folders: dict[Path, Path]) -> Path:
    """``path.resolve()``, its folder resolved once for all the inputs in it:
    the name of an input that is no symbolic link adds nothing to resolve."""
    if path.name in ("", ".", "..") or os.path.islink(path):
        return path.resolve()
    folder = folders.get(path.parent)
    if folder is None:
        folder = folders[path.parent] = path.parent.resolve()
    return folder / path.name


def _refuse_keys(path: Path, first: Path, first_keys: list[str], keys: list[str]) -> None:
    missing = [key for key in first_keys if key not in keys]
    extra = [key for key in keys if key not in first_keys]
    if missing:
        raise InputError(
            f"{path}: has no array '{missing[0]}', which {first} has; every input of a set needs the same arrays"
        )
    raise InputError(
        f"{path}: has an array '{extra[0]}', which {first} lacks; every input of a set needs the same arrays"
    )


def _shard_specs(
    reader, path: Path, keys, shared, x_key: str, first_shared: dict, first: Path, groups: str | None = None
) -> dict:
    """The input's specs of the arrays used, checked: shared arrays equal to the
    first input's, x and y of one length, rows to mix."""
    specs = {}
    for key in keys:
        option = "--x-key" if key == x_key else "--groups" if key == groups else "--y-key"
        kinds = "fiu" if key == x_key else "fiubSUO"
        specs[key] = reader.require(key, option, kinds=kinds)
    for key in shared:
        value = reader.read(key, 0, reader.spec(key).rows)
        ref = first_shared.setdefault(key, value)
        if ref.shape != value.shape or not np.array_equal(ref, value):
            raise InputError(
                f"{path}: array '{key}' differs from {first}'s; the inputs of a set need the same categories"
            )
    rows = specs[x_key].rows
    for key, spec in specs.items():
        if spec.rows != rows:
            raise InputError(
                f"{path}: '{x_key}' has {rows} rows but '{key}' has {spec.rows}; x and y need one row per sample"
            )
    if rows == 0:
        raise InputError(f"{path}: '{x_key}' has zero rows; remove it from the set's inputs")
    return specs


def _agree(path: Path, specs: dict[str, ArraySpec], first: Path, first_specs: dict[str, ArraySpec]) -> None:
    for key, spec in specs.items():
        ref = first_specs[key]
        if spec.row_shape != ref.row_shape:
            raise InputError(
                f"{path}: array '{key}' has rows of shape {spec.row_shape}, but {first}'s are {ref.row_shape}; every "
                "input of a set needs the same row shape"
            )
        a, b = np.dtype(spec.dtype), np.dtype(ref.dtype)
        if a == b or (a.kind in STRING_KINDS and b.kind in STRING_KINDS):
            continue  # string labels: lengths and storage may differ, the names are read as text
        raise InputError(
            f"{path}: array '{key}' is {a}, but {first}'s is {b}; every input of a set needs the same dtype "
            "(convert it, or leave it out of the set)"
        )


def output_name(name: str, outdir: Path) -> str:
    """The name of a set's output of the input named ``name``: the same name
    when it is an output format's (``part-0.h5``, a WebDataset shard
    ``shard-000.tar``; a folder ``a`` of images is written as a folder of
    ``.npy`` files); ``""`` for any other name."""
    try:
        format_of(Path(outdir) / name, for_output=True)
    except ParameterError:
        return ""
    return name


def output_paths(layout_or_paths, outdir: Path) -> list[Path]:
    """OUTDIR/<name of input k> for each input, in the format its name says
    (``output_name``).

    Refused: two inputs of the same output name (from different folders), and
    a name that is not an output format (an HDF5 input named ``.h5ad``)."""
    paths = (
        [s.path for s in layout_or_paths.shards] if isinstance(layout_or_paths, SetLayout) else list(layout_or_paths)
    )
    outdir = Path(outdir)
    names: dict[str, Path] = {}
    found = []
    for path in paths:
        name = output_name(Path(path).name, outdir)
        if not name:
            raise ParameterError(
                f"{path}: its output {outdir / Path(path).name} would have no output format; a set's outputs take "
                "their inputs' names (.h5, .hdf5, .npz, .zarr or a directory of .npy files), so rename the input",
                "IN",
            )
        if name in names:
            raise ParameterError(
                f"{path}: has the same name as {names[name]}; outputs are named after their inputs, so rename one",
                "IN",
            )
        names[name] = path
        found.append(outdir / name)
    return found


def check_outdir(outdir: Path) -> None:
    """OUTDIR must be a directory that exists (or can be created by the caller)."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: is a file, not a directory; a set's outputs go into a directory (OUTDIR)")
    if not outdir.exists() and outdir.suffix and _names_a_file_format(outdir):
        # A folder of shards or a brace pattern is a set: `IN out.h5` would make a directory out.h5.
        raise ParameterError(
            f"{outdir}: the inputs are a set, written as one output per input into a folder, but this name is "
            f"a {outdir.suffix} file's; name a folder for them (for example {outdir.with_suffix('')}/), "
            "or pass a single input file to write one output",
            "OUTDIR",
        )
    parent = outdir.resolve().parent
    if not outdir.exists() and not parent.is_dir():
        raise OutputError(f"{outdir}: directory {parent} does not exist; create it first")


def check_storage_options(
    outputs: Sequence[Path],
    compression: str,
    block_rows: int | None,
    chunk_rows: int | None = None,
    byte_shuffle: bool | None = None,
    zarr_format: int | None = None,
) -> None:
    """The storage options of one command apply to every output: refuse
    them, naming the first output of a format they do not fit (a set may
    mix formats; ``--zarr-format`` then does not fit its HDF5 outputs)."""
    from mixup_cli.io import writer_compressions

    done = set()
    for out in outputs:
        fmt = format_of(out, for_output=True)
        if fmt in done:
            continue
        done.add(fmt)
        try:
            layout_options(fmt, compression, block_rows, chunk_rows, byte_shuffle, zarr_format)
            if compression not in writer_compressions(fmt):
                raise ParameterError(f"--compression {compression} is not available for {fmt} output", "--compression")
        except ParameterError as exc:
            raise ParameterError(f"{out}: {exc}", exc.option) from None


def _names_a_file_format(path: Path) -> bool:
    try:
        return format_of(path, for_output=True) != "npydir"
    except ParameterError:
        return False  # not an output format's name at all: a folder name like any other
