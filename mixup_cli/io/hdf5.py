"""HDF5 datasets through h5py: ``.h5``, ``.hdf5``, and any input file with
the HDF5 signature (``.h5ad``, ``.nc``, ``.he5``...).

Output datasets are chunked along the sample axis with chunks that divide
the plan's block size, so every block the pipeline writes covers whole chunks.
"""

from __future__ import annotations

import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError, OutputError
from mixup_cli.io import base
from mixup_cli.io.base import GZIP_LEVEL, ArraySpec, WriteOptions

_LOCK_HINT = (
    "the file is locked by another process, or this filesystem does not support "
    "HDF5 file locking; if no other process writes it, set HDF5_USE_FILE_LOCKING=FALSE"
)


def _is_lock_error(exc: OSError) -> bool:
    # Word match: HDF5's messages also mention "sblock" (the superblock).
    return re.search(r"\bf?lock(s|ed|ing)?\b", str(exc).lower()) is not None


def _open_error(path: Path, exc: OSError) -> InputError:
    text = str(exc).lower()
    if _is_lock_error(exc):
        return InputError(f"{path}: cannot open HDF5 file: {_LOCK_HINT}")
    if "permission" in text or getattr(exc, "errno", None) == 13:
        return InputError(f"{path}: permission denied; make the file readable")
    if "truncated file" in text:
        return InputError(f"{path}: not a readable HDF5 file: it is truncated; copy or write it again completely")
    return InputError(f"{path}: not a readable HDF5 file (is it damaged, truncated or another format?)")


def open_reader(path: Path, fast: bool = True) -> Reader:
    return Reader(path, fast=fast)


# The reader's own paths by name, for bench/bench_hdf5_paths.py to measure
# each against HDF5's reading: MIXUP_HDF5_OFF=raw-read,raw-take,dataset-pread
# turns those off (read here only).
OWN_PATHS = ("raw-read", "raw-take", "dataset-pread")


def own_paths(fast: bool = True) -> frozenset[str]:
    """The reader's own paths in use (none without ``fast``)."""
    off = {name.strip() for name in os.environ.get("MIXUP_HDF5_OFF", "").split(",")}
    return frozenset(name for name in OWN_PATHS if fast and name not in off)


# Reader.take groups the rows it reads by chunk, or in contiguous storage by
# windows of about TAKE_WINDOW_BYTES; within a group, a raw read goes on
# through up to TAKE_GAP_BYTES of unwanted rows rather than start another
# (measured on 40 B, 1 KiB and 12 KiB rows with 0.2-30% of rows wanted:
# 64 KiB was never far from the fastest, whole chunks up to 2x slower).
TAKE_WINDOW_BYTES = 1 << 20
TAKE_GAP_BYTES = 64 << 10

# HDF5 keeps 1 MiB of a dataset's chunks decoded by default. Compressed chunks
# bigger than that (the whole array in one, as h5py and netCDF often write)
# would be inflated again by every read that touches them: once per block
# and per partner read (1,000,000 x 64 float32 in one gzip chunk took 53-78 s
# against 3.1 s for one h5py read of it). Such a dataset is opened with a
# cache holding the chunks one row crosses, up to MAX_CHUNK_CACHE_BYTES.
DEFAULT_CHUNK_CACHE_BYTES = 1 << 20
MAX_CHUNK_CACHE_BYTES = 1 << 30

# Filters HDF5 may lack, by id: the name users know and where it comes from.
_PLUGINS = {
    307: "bzip2",
    32000: "lzf",
    32001: "blosc",
    32002: "mafisc",
    32003: "snappy",
    32004: "lz4",
    32005: "apax",
    32006: "cbf",
    32007: "jpeg-xr",
    32008: "bitshuffle",
    32009: "spdp",
    32010: "lpc-rice",
    32011: "ccsds-123",
    32012: "jpeg-ls",
    32013: "zfp",
    32014: "fpzip",
    32015: "zstd",
    32016: "b3d",
    32017: "sz",
    32018: "fcidecomp",
    32019: "jpeg",
    32020: "vbz",
    32022: "fapec",
    32023: "bitgroom",
    32024: "granular bitround",
    32025: "sz3",
    32026: "blosc2",
    32027: "flac",
    4: "szip",
}
_PLUGIN_HINT = (
    "install the plugin (for example `pip install hdf5plugin`, which mixup loads when present) "
    "or point HDF5_PLUGIN_PATH at a folder holding it"
)


def _runs(rows: np.ndarray, group: int, gap: int):
    """``(first, stop)`` index pairs cutting sorted unique ``rows`` into runs
    read at once: never across a multiple of ``group`` rows, nor across more
    than ``gap`` unwanted rows."""
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (rows[1:] // group != rows[:-1] // group) | (np.diff(rows) > gap + 1)
    starts = np.flatnonzero(new)
    return zip(starts.tolist(), np.append(starts[1:], len(rows)).tolist())


def _native_order() -> int:
    return h5py.h5t.ORDER_LE if np.little_endian else h5py.h5t.ORDER_BE


def plain_type(tid, dtype: np.dtype) -> bool:
    """Whether the stored HDF5 type ``tid`` is, bit for bit, the numpy
    ``dtype`` h5py reads it as: then its bytes can be copied as they are.
    Anything else (fewer significant bits, a bit offset, padding, another
    byte order, a float layout or exponent bias other than IEEE's, enums)
    must go through HDF5's conversion."""
    dtype = np.dtype(dtype)
    if not dtype.isnative or dtype.kind not in "fiu":
        return False
    try:
        cls = tid.get_class()
        expected = h5py.h5t.INTEGER if dtype.kind in "iu" else h5py.h5t.FLOAT
        if cls != expected or tid.get_size() != dtype.itemsize or tid.get_order() != _native_order():
            return False
        if tid.get_precision() != 8 * dtype.itemsize or tid.get_offset() != 0:
            return False
        if tid.get_pad() != (h5py.h5t.PAD_ZERO, h5py.h5t.PAD_ZERO):
            return False
        if cls == h5py.h5t.INTEGER:
            return tid.get_sign() == (h5py.h5t.SGN_2 if dtype.kind == "i" else h5py.h5t.SGN_NONE)
        ref = h5py.h5t.py_create(dtype)  # IEEE's layout of that size, as h5py makes it
        return (
            tid.get_fields() == ref.get_fields()
            and tid.get_ebias() == ref.get_ebias()
            and tid.get_norm() == ref.get_norm()
        )
    except Exception:
        return False


def type_name(dtype: np.dtype, tid=None) -> str:
    """A dtype in words people read: byte order, string kind and size,
    compound fields; with the HDF5 type, its unusual bit layouts."""
    dtype = np.dtype(dtype)
    vlen = h5py.check_string_dtype(dtype)
    if vlen is not None and vlen.length is None:
        return "string (variable length)"
    if h5py.check_vlen_dtype(dtype) is not None:
        return f"variable-length sequence of {type_name(h5py.check_vlen_dtype(dtype))}"
    if dtype.names:
        return "compound {" + ", ".join(f"{n}: {type_name(dtype.fields[n][0])}" for n in dtype.names) + "}"
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return f"{type_name(base)} array {tuple(shape)}"
    if dtype.kind == "S":
        return f"string (fixed, {dtype.itemsize} bytes)"
    if dtype.kind == "U":
        return f"string (fixed, {dtype.itemsize // 4} characters)"
    if dtype.kind == "V":
        return f"opaque ({dtype.itemsize} bytes)"
    if dtype.kind == "O":
        return "object references"
    name = dtype.name
    if dtype.kind == "f" and dtype.itemsize > 8:
        name = f"long double ({8 * dtype.itemsize}-bit)"
    if dtype.itemsize > 1 and dtype.byteorder not in ("=", "|") and not dtype.isnative:
        name = ("big-endian " if dtype.byteorder == ">" else "little-endian ") + name
    if tid is not None and dtype.kind in "fiu":
        try:
            cls = tid.get_class()
            if cls == h5py.h5t.ENUM:
                name = f"enum of {name}"
            elif cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
                if tid.get_order() != _native_order() and "endian" not in name and tid.get_size() > 1:
                    name = ("big-endian " if tid.get_order() == h5py.h5t.ORDER_BE else "little-endian ") + name
                if tid.get_precision() != 8 * tid.get_size() or tid.get_offset():
                    name += f" ({tid.get_precision()} bits at bit {tid.get_offset()})"
                elif cls == h5py.h5t.FLOAT:
                    ref = h5py.h5t.py_create(dtype.newbyteorder("="))
                    if (tid.get_size(), tid.get_fields(), tid.get_ebias()) != (
                        ref.get_size(),
                        ref.get_fields(),
                        ref.get_ebias(),
                    ):
                        name = (
                            f"{8 * tid.get_size()}-bit float, non-IEEE (exponent bias {tid.get_ebias()}), "
                            f"read as {dtype.name}"
                        )
        except Exception:
            pass
    return name


def _chunk_cache_bytes(ds: h5py.Dataset) -> int | None:
    """The chunk cache ``ds`` needs to inflate each chunk once when read a
    block of rows at a time (the chunks one row crosses), where it is
    compressed and HDF5's default is too small; None where the default
    serves, or the chunks one row crosses are above ``MAX_CHUNK_CACHE_BYTES``
    (then HDF5 inflates a chunk again for each read that touches it)."""
    try:
        chunks, shape = ds.chunks, ds.shape
        if not chunks or not shape or not ds.id.get_create_plist().get_nfilters():
            return None
        across = int(np.prod([-(-shape[d] // chunks[d]) for d in range(1, len(shape))], dtype=np.int64))
        need = across * int(np.prod(chunks, dtype=np.int64)) * ds.dtype.itemsize + DEFAULT_CHUNK_CACHE_BYTES
        return need if 2 * DEFAULT_CHUNK_CACHE_BYTES < need <= MAX_CHUNK_CACHE_BYTES and ds.name else None
    except Exception:
        return None


def _open_with_cache(file: h5py.File, name: str, nbytes: int) -> h5py.Dataset | None:
    """``name`` in ``file`` opened with a chunk cache of ``nbytes`` (None if it cannot be)."""
    try:
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_chunk_cache(10007, nbytes, 0.75)
        return h5py.Dataset(h5py.h5d.open(file.id, name.encode(), dapl))
    except Exception:
        return None


def _first_existing(name: str, prefixes: list[str], origin: Path) -> Path | None:
    """Where HDF5 finds a file it names relative to prefixes (``${ORIGIN}``:
    the directory of the file naming it), or None when it is nowhere."""
    if os.path.isabs(name):
        return Path(name) if os.path.exists(name) else None
    for prefix in prefixes:
        for part in prefix.split(os.pathsep):  # HDF5 splits its prefixes the same way
            if part:
                candidate = Path(part.replace("${ORIGIN}", str(origin))) / name
                if candidate.exists():
                    return candidate
    return None


def _prefix(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _sparse_group(obj) -> bool:
    return isinstance(obj, h5py.Group) and all(name in obj for name in ("data", "indices", "indptr"))


class _Keys(list):
    """The arrays listed (each once), where ``in`` asks h5py: any path it
    resolves is a key (leading '/', soft, hard and external links)."""

    def __init__(self, listed, reader: Reader):
        super().__init__(listed)
        self._reader = reader

    def __contains__(self, key) -> bool:
        return list.__contains__(self, key) or self._reader._exists(key)


class Reader(base.Reader):
    """HDF5 input.

    With ``fast`` (the default), unfiltered rows whose stored bytes are
    exactly the numpy dtype h5py returns are read with ``os.preadv`` at their
    byte offsets, without HDF5's conversion (blocks, and rows by index for
    ``take``: bench/bench_hdf5_paths.py). Everything else, compressed chunks
    included, is read by HDF5. With ``fast=False`` every read goes through
    HDF5 (``verify`` recomputes from that, so a wrong fast path cannot
    certify itself).
    """

    format_name = "hdf5"

    def __init__(self, path: Path, fast: bool = True):
        super().__init__(path)
        self.fast = fast
        self._own = own_paths(fast)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        self._listed: list[str] | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._raw: dict[str, tuple | None] = {}
        self._fds: dict[str, int] = {}
        self._index: dict[str, tuple | None] = {}
        self._scratch: np.ndarray | None = None

    # --- names ---------------------------------------------------------

    def keys(self) -> list[str]:
        if self._listed is None:
            names = []
            try:
                self._file.visit(names.append)  # each object once, by its first name
            except (OSError, KeyError, RuntimeError, ValueError):
                pass  # a broken link deeper down: list what was reached
            listed = []
            for name in names:
                try:
                    if self._file.get(name, getclass=True) is h5py.Dataset:
                        listed.append(name)
                except (OSError, KeyError, RuntimeError, ValueError, TypeError):
                    listed.append(name)  # unreadable: listed, and inspect says why
            self._listed = listed
        return _Keys(self._listed, self)

    def _exists(self, key: str) -> bool:
        try:
            return self._file.get(key, getlink=True) is not None
        except (OSError, KeyError, ValueError, RuntimeError, TypeError):
            return False

    def _ds(self, key: str, option: str = "its key option") -> h5py.Dataset:
        """The dataset h5py opens at ``key``, or an error saying why not
        (``option``: the option that names another array)."""
        ds = self._datasets.get(key)
        if ds is not None:
            return ds
        try:
            obj = self._file.get(key)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            link = None
            try:
                link = self._file.get(key, getlink=True)
            except (OSError, KeyError, ValueError, RuntimeError):
                pass
            if isinstance(link, h5py.ExternalLink):
                raise InputError(
                    f"{self.path}: array '{key}' is an external link to '{link.path}' in {link.filename}, "
                    "which cannot be opened; put that file where the link points"
                ) from None
            raise InputError(f"{self.path}: cannot open '{key}' ({exc})") from None
        if obj is None:
            raise KeyError(key)
        if isinstance(obj, h5py.Group):
            if _sparse_group(obj):
                encoding = obj.attrs.get("encoding-type", b"")
                encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
                kind = {"csr_matrix": "CSR", "csc_matrix": "CSC"}.get(encoding, "CSR/CSC")
                raise InputError(
                    f"{self.path}: '{key}' is a sparse matrix ({kind}: a group of data, indices and indptr), "
                    "and mixup mixes dense arrays; densify it first (for example with anndata: "
                    f"adata.X = adata.X.toarray(), then write_h5ad) or pass another array with {option}"
                )
            pandas = _pandas_frame(self.path, key, obj, option)
            if pandas:
                raise InputError(pandas)
            member = _example_member(obj)
            example = f" (for example '{key.rstrip('/')}/{member}')" if member else ""
            raise InputError(
                f"{self.path}: '{key}' is a group, not an array; pass the path of an array in it with {option}{example}"
            )
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{self.path}: '{key}' is not an array")
        cache = _chunk_cache_bytes(obj)
        if cache:
            file, name = obj.file, obj.name
            obj = None  # closed: HDF5 takes a dataset's cache size when it first opens it
            obj = _open_with_cache(file, name, cache) or self._file.get(key)
        self._datasets[key] = obj
        return obj

    def _dtype(self, key: str, ds: h5py.Dataset) -> np.dtype:
        try:
            return ds.dtype
        except (TypeError, ValueError) as exc:
            try:
                cls = ds.id.get_type().get_class()
            except Exception:
                cls = None
            what = {h5py.h5t.TIME: "an HDF5 time type (H5T_TIME)"}.get(cls, "an HDF5 type numpy cannot hold")
            raise InputError(
                f"{self.path}: array '{key}' has {what}, which cannot be mixed ({exc}); store it as integers or floats"
            ) from None

    # --- what an array is ------------------------------------------------

    def spec(self, key: str) -> ArraySpec:
        ds = self._ds(key)
        if ds.shape is None:
            raise InputError(
                f"{self.path}: array '{key}' is empty (an HDF5 null dataspace: no shape, no values); "
                "write it with its rows, or name another array"
            )
        return ArraySpec(tuple(ds.shape), self._dtype(key, ds))

    def cf_attributes(self, key: str) -> dict | None:
        """The CF attributes of a netCDF-4 variable (packing, fill values):
        only in files netCDF wrote (its properties attribute, or dimension
        scales), where those names have that meaning."""
        ds = self._ds(key)
        if "_NCProperties" not in self._file.attrs and "DIMENSION_LIST" not in ds.attrs:
            return None
        names = ("scale_factor", "add_offset", "_FillValue", "missing_value")
        return {name: ds.attrs[name] for name in names if name in ds.attrs} or None

    def dataset(self, key: str) -> h5py.Dataset:
        """The h5py dataset at ``key``, read through HDF5's own decoding (``io.axes``)."""
        return self._ds(key)

    def dimension_names(self, key: str) -> list[str | None] | None:
        """netCDF-4 dimension names of ``key``'s stored axes (its dimension
        scales' names; None where an axis has none), or None without any."""
        try:
            ds = self._ds(key)
            if "DIMENSION_LIST" not in ds.attrs:
                own = ds.attrs.get("CLASS") == b"DIMENSION_SCALE" and ds.ndim == 1
                return [ds.name.rsplit("/", 1)[-1]] if own else None
            names = []
            for dim in ds.dims:
                scales = list(dim.values())
                names.append(scales[0].name.rsplit("/", 1)[-1] if scales and scales[0].name else None)
            return names
        except Exception:
            return None

    def matlab_class(self, key: str) -> str | None:
        """The ``MATLAB_class`` attribute MATLAB v7.3 writes on each variable, or None."""
        value = self._ds(key).attrs.get("MATLAB_class")
        return value.decode(errors="replace") if isinstance(value, bytes) else (None if value is None else str(value))

    def enum_members(self, key: str) -> dict[str, int] | None:
        """An HDF5 enum's names and values (labels stored as named integers)."""
        return h5py.check_enum_dtype(self._ds(key).dtype)

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        if key in self.keys():
            self._check_readable(key, self._ds(key, option))
        spec = super().require(key, option, kinds)
        if spec.dtype.kind == "f" and spec.dtype.itemsize > 8:
            raise InputError(
                f"{self.path}: array '{key}' is long double ({8 * spec.dtype.itemsize}-bit float), "
                "which mixup does not write; convert it to float64 first"
            )
        return spec

    def _check_readable(self, key: str, ds: h5py.Dataset) -> None:
        """Refuse now, in words, what HDF5 would fail on at the first read
        (or worse, fill in silently): missing filters and files."""
        self._dtype(key, ds)
        for code, name in self._filters(ds):
            if h5py.h5z.filter_avail(code):
                continue
            _load_plugins()
            if not h5py.h5z.filter_avail(code):
                raise InputError(
                    f"{self.path}: array '{key}' is compressed with HDF5 filter {code} ({name}), which this "
                    f"HDF5 lacks; {_PLUGIN_HINT}"
                )
        for item in ds.external or []:
            if self._external_file(ds, item[0]) is None:
                raise InputError(
                    f"{self.path}: array '{key}' keeps its data in the external file '{item[0]}', which is "
                    "missing (looked for as HDF5 does: relative to the current directory or "
                    "HDF5_EXTFILE_PREFIX); put it back or run from the folder it is relative to"
                )
        for name in self._missing_sources(ds):
            raise InputError(
                f"{self.path}: virtual array '{key}' takes rows from '{name}', which is missing "
                "(HDF5 would fill them in silently); put the source file back beside the file"
            )

    def _filters(self, ds: h5py.Dataset) -> list[tuple[int, str]]:
        try:
            dcpl = ds.id.get_create_plist()
            found = []
            for i in range(dcpl.get_nfilters()):
                code, _flags, _values, stored = dcpl.get_filter(i)
                stored = stored.decode(errors="replace") if isinstance(stored, bytes) else str(stored or "")
                found.append((code, _PLUGINS.get(code) or stored or "unknown"))
            return found
        except Exception:
            return []

    def _external_file(self, ds: h5py.Dataset, name) -> Path | None:
        name = os.fsdecode(name)
        try:
            prefix = _prefix(ds.id.get_access_plist().get_efile_prefix())
        except Exception:
            prefix = ""
        prefixes = [os.environ.get("HDF5_EXTFILE_PREFIX", ""), prefix, os.getcwd()]
        return _first_existing(name, prefixes, Path(ds.file.filename).parent)

    def _sources(self, ds: h5py.Dataset) -> list[tuple[str, Path | None]]:
        """The source files of a virtual dataset: (name stored, where it is)."""
        if not ds.is_virtual:
            return []
        try:
            prefix = _prefix(ds.id.get_access_plist().get_virtual_prefix())
        except Exception:
            prefix = ""
        here = Path(ds.file.filename)
        prefixes = [os.environ.get("HDF5_VDS_PREFIX", ""), prefix, str(here.parent), os.getcwd()]
        found = []
        for vmap in ds.virtual_sources():
            name = vmap.file_name
            if name == ".":
                found.append((name, here))
            elif "%" in name:  # a printf-style pattern: HDF5 maps many files; not followed here
                continue
            else:
                found.append((name, _first_existing(name, prefixes, here.parent)))
        return found

    def _missing_sources(self, ds: h5py.Dataset) -> list[str]:
        try:
            return [name for name, where in self._sources(ds) if where is None]
        except Exception:
            return []

    # --- reading -----------------------------------------------------------

    def _hdf5_read(self, key: str, out: np.ndarray, start: int, stop: int) -> None:
        """Rows through HDF5 (its type conversion and filters). A compressed
        chunk that does not decode is named by its rows; another OSError goes
        up as it is."""
        ds = self._ds(key)
        try:
            if start == 0 and stop == ds.shape[0] and out.shape == ds.shape:  # a whole (small) array: no selections
                ds.read_direct(out)
                return
            ds.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
        except OSError as exc:
            damaged = self._damaged_chunk(ds, start, stop) if self._filters(ds) else None
            if damaged is None:
                raise
            raise InputError(
                f"{self.path}: the compressed chunk of '{key}' rows {damaged[0]}:{damaged[1]} is damaged ({exc}); "
                "copy or write the file again"
            ) from None

    @staticmethod
    def _damaged_chunk(ds: h5py.Dataset, start: int, stop: int) -> tuple[int, int] | None:
        """The rows of the first chunk among rows ``start:stop`` that HDF5 cannot read."""
        step = ds.chunks[0]
        for lo in range(start // step * step, stop, step):
            hi = min(lo + step, ds.shape[0])
            try:
                ds[lo:hi]
            except OSError:
                return lo, hi
        return None

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        ds = self._ds(key)
        out = np.empty((stop - start,) + ds.shape[1:], dtype=self._dtype(key, ds))
        if stop > start:
            self._hdf5_read(key, out, start, stop)
        return out

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if stop <= start:
            return
        if "raw-read" in self._own and self._raw_read(key, start, stop, out):
            return
        self._hdf5_read(key, out, start, stop)

    def _plain(self, ds: h5py.Dataset) -> bool:
        """Whether the fast paths may copy this dataset's stored bytes."""
        if not self.fast or ds.is_virtual or not ds.shape or not ds.shape[0]:
            return False
        try:
            return (
                plain_type(ds.id.get_type(), ds.dtype)
                and ds.external is None
                and ds.file.id.get_create_plist().get_userblock() == 0
            )
        except Exception:
            return False

    def _fd(self, ds: h5py.Dataset) -> int:
        name = ds.file.filename  # another file's for an external link
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(name, os.O_RDONLY)
        return fd

    def _stream(self, key: str):
        """``(chunk_bytes, chunk_rows, chunks_per_row_group)`` when the chunks
        of ``key``, taken in order, hold its elements in C order: chunks of
        whole rows, or chunks of one row that split it only along one axis
        into equal parts (``(1, 64)`` of 256 columns); else None. Chunk ``k``
        then holds bytes ``[k*chunk_bytes, (k+1)*chunk_bytes)`` of the rows
        laid end to end (the last chunk may run past the end)."""
        ds = self._ds(key)
        c, shape = ds.chunks, ds.shape
        if not c or not shape:
            return None
        itemsize = ds.dtype.itemsize
        if tuple(c[1:]) == tuple(shape[1:]):
            return int(np.prod(c, dtype=np.int64)) * itemsize, c[0], 1
        if c[0] != 1:
            return None
        split = [d for d in range(1, len(shape)) if c[d] != shape[d]]
        m = split[-1]
        if any(c[d] != 1 for d in range(1, m)) or shape[m] % c[m]:
            return None
        per_row = int(np.prod(shape[1:m], dtype=np.int64)) * (shape[m] // c[m])
        return int(np.prod(c, dtype=np.int64)) * itemsize, 1, per_row

    def _chunk_index(self, key: str):
        """``(byte offsets, sizes, filter masks)`` of the chunks of ``key`` in
        the order of ``_stream`` (offset -1 where a chunk was never written).
        Read once, in one pass over HDF5's index: a lookup by coordinate costs
        more the further the chunk is, which made reading quadratic."""
        if key in self._index:
            return self._index[key]
        ds, stream, index = self._ds(key), self._stream(key), None
        chunk_iter = getattr(ds.id, "chunk_iter", None)
        if stream is not None and chunk_iter is not None:
            c, shape = ds.chunks, ds.shape
            grid = [-(-shape[d] // c[d]) for d in range(len(shape))]
            found = []
            try:
                chunk_iter(found.append)
                total = int(np.prod(grid, dtype=np.int64))
                offsets = np.full(total, -1, dtype=np.int64)
                sizes = np.zeros(total, dtype=np.int64)
                masks = np.zeros(total, dtype=np.int64)
                if found:
                    # Each record is (chunk_offset, filter_mask, byte_offset, size).
                    coords = np.array([info[0] for info in found], dtype=np.int64).reshape(len(found), -1)
                    k = np.ravel_multi_index(tuple(coords[:, d] // c[d] for d in range(len(shape))), grid)
                    offsets[k] = np.fromiter((info[2] for info in found), np.int64, len(found))
                    sizes[k] = np.fromiter((info[3] for info in found), np.int64, len(found))
                    masks[k] = np.fromiter((info[1] for info in found), np.int64, len(found))
                index = (offsets, sizes, masks)
            except Exception:
                index = None
        self._index[key] = index
        return index

    def _chunk_range(self, key: str, start: int, stop: int):
        """The chunks holding rows ``start:stop`` and the byte range of the
        rows laid end to end."""
        chunk_bytes, chunk_rows, per_row = self._stream(key)
        row_bytes = chunk_bytes * per_row // chunk_rows
        first, last = (start // chunk_rows) * per_row, -(-stop // chunk_rows) * per_row
        return chunk_bytes, first, last, start * row_bytes, stop * row_bytes

    def _raw_layout(self, key: str):
        """``(row_bytes, chunked, contiguous offset)`` when the rows of
        ``key`` lie in the file as plain bytes (no filter, a type copied as
        stored, ``_stream`` chunks or contiguous storage); else None."""
        if key in self._raw:
            return self._raw[key]
        layout = None
        ds = self._ds(key)
        try:
            if self._plain(ds) and not self._filters(ds):
                row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
                if ds.chunks is None:
                    offset = ds.id.get_offset()
                    if offset is not None:
                        layout = (row_bytes, False, offset)
                elif self._stream(key) is not None and self._chunk_index(key) is not None:
                    layout = (row_bytes, True, None)
        except Exception:
            layout = None
        self._raw[key] = layout
        return layout

    def _raw_read(self, key: str, start: int, stop: int, out: np.ndarray) -> bool:
        """Rows of plain chunks that split a row (``(1, 256)`` of 1,024
        columns) read with ``os.preadv`` straight into ``out``: HDF5 costs
        about a call per chunk there (1.8-2.4x slower end to end; in
        contiguous storage or chunks of whole rows it is within 1.25x, and
        reads those). False (and nothing read) when the layout is another."""
        layout, stream = self._raw_layout(key), self._stream(key)
        ds = self._ds(key)
        if layout is None or stream is None or stream[2] == 1:
            return False
        if not out.flags.c_contiguous or out.dtype != ds.dtype:
            return False
        offsets, sizes, masks = self._chunk_index(key)
        chunk_bytes, first, last, want_lo, want_hi = self._chunk_range(key, start, stop)
        chunk_offsets = offsets[first:last]
        if (chunk_offsets < 0).any() or masks[first:last].any() or (sizes[first:last] < chunk_bytes).any():
            return False  # unallocated (fill value) or unusual chunk: let HDF5 do it
        begin = np.arange(first, last, dtype=np.int64) * chunk_bytes
        lo = np.maximum(begin, want_lo)
        hi = np.minimum(begin + chunk_bytes, want_hi)
        file_at = chunk_offsets + (lo - begin)
        count = hi - lo
        # Chunks stored one after the other are read in one call.
        new = np.ones(len(begin), dtype=bool)
        new[1:] = file_at[1:] != file_at[:-1] + count[:-1]
        starts = np.flatnonzero(new)
        totals = np.add.reduceat(count, starts)
        pieces = list(zip(file_at[starts].tolist(), (lo[starts] - want_lo).tolist(), totals.tolist()))
        dest = memoryview(out[: stop - start]).cast("B")
        base.pread_pieces(self._fd(ds), dest, pieces, f"{self.path}: '{key}'")
        return True

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The rows: plain bytes (contiguous, or chunks of whole rows) at
        their computed offsets (``_raw_take``: 1.8-5x faster end to end with
        global pairing); else through HDF5 chunk by chunk (h5py's list
        indexing of chunked storage is many times slower): the rows wanted
        from one chunk read as one range, into the result when it is all
        wanted rows, else into a reused buffer they are copied from."""
        ds = self._ds(key)
        raw = "raw-take" in self._own and self._raw_layout(key) is not None
        if ds.chunks is None and not raw:
            # Contiguous or compact, read through HDF5: its point selections are fast there.
            return ds[rows.tolist()] if len(rows) else self.read(key, 0, 0)
        out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
        if not out.size:
            return out
        if rows[0] < 0 or rows[-1] >= ds.shape[0]:
            raise IndexError(f"{self.path}: rows of '{key}' out of range 0..{ds.shape[0] - 1}")
        if raw and self._raw_take(key, rows, out):
            return out
        # An HDF5 read of a chunk costs about the whole chunk: one read each.
        group = ds.chunks[0]
        for first, stop in _runs(rows, group, group):
            lo, hi = int(rows[first]), int(rows[stop - 1]) + 1
            whole = hi - lo == stop - first  # every row of the range is wanted
            dest = out[first:stop] if whole else self._buffer(out, hi - lo)
            self._hdf5_read(key, dest, lo, hi)
            if not whole:
                np.take(dest, rows[first:stop] - lo, axis=0, out=out[first:stop], mode="clip")
        return out

    def _raw_take(self, key: str, rows: np.ndarray, out: np.ndarray) -> bool:
        """Sorted, unique ``rows`` of plain bytes (contiguous, or chunks of
        whole rows) straight into ``out``: each row's file offset computed at
        once, rows adjacent in the file read in one call. False (nothing
        read) where the layout does not allow it."""
        row_bytes, chunked, offset = self._raw_layout(key)
        rows = np.asarray(rows, dtype=np.int64)
        if not chunked:
            file_at = offset + rows * row_bytes
            group = rows // max(1, TAKE_WINDOW_BYTES // row_bytes)  # a read stays within a window ...
        else:
            chunk_bytes, chunk_rows, per_row = self._stream(key)
            if per_row != 1:
                return False
            offsets, sizes, masks = self._chunk_index(key)
            k = rows // chunk_rows
            at = offsets[k]
            if (at < 0).any() or masks[k].any() or (sizes[k] < chunk_bytes).any():
                return False  # unallocated (fill value) or unusual chunk: let HDF5 do it
            file_at = at + (rows - k * chunk_rows) * row_bytes
            group = k  # ... or a chunk: the buffer holds one at most
        # A read goes on through up to TAKE_GAP_BYTES of unwanted rows rather than start another.
        gap = file_at[1:] - (file_at[:-1] + row_bytes)
        starts = np.flatnonzero(np.append(True, (gap < 0) | (gap > TAKE_GAP_BYTES) | (np.diff(group) != 0)))
        ends = np.append(starts[1:], len(rows))
        spans = file_at[ends - 1] + row_bytes - file_at[starts]
        whole = spans == (ends - starts) * row_bytes  # every row of the span is wanted
        fd, label = self._fd(self._ds(key)), f"{self.path}: '{key}'"
        pieces = zip(file_at[starts[whole]].tolist(), (starts[whole] * row_bytes).tolist(), spans[whole].tolist())
        base.pread_pieces(fd, memoryview(out).cast("B"), pieces, label)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for lo, hi, span in zip(starts[~whole].tolist(), ends[~whole].tolist(), spans[~whole].tolist()):
            buf = self._buffer(flat, span // row_bytes)
            base.pread_pieces(fd, memoryview(buf).cast("B"), [(int(file_at[lo]), 0, span)], label)
            np.take(buf, (file_at[lo:hi] - file_at[lo]) // row_bytes, axis=0, out=flat[lo:hi])
        return True

    def _buffer(self, like: np.ndarray, rows: int) -> np.ndarray:
        """A C-contiguous array of ``rows`` rows shaped like ``like``'s, in
        memory kept for the next call (at most one chunk's or window's bytes)."""
        nbytes = rows * (like.nbytes // len(like))
        if self._scratch is None or self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes].view(like.dtype).reshape((rows,) + like.shape[1:])

    def take_inflates(self, key: str) -> bool:
        return bool(self._filters(self._ds(key)))

    def describe(self, key: str) -> dict:
        ds = self._ds(key)
        filters = self._filters(ds)
        compression = ds.compression or "none"
        if compression == "none" and filters:
            compression = "+".join(name for _, name in filters)
        info = {"chunks": list(ds.chunks) if ds.chunks else None, "compression": compression}
        try:
            info["type"] = type_name(self._dtype(key, ds), ds.id.get_type())
        except InputError:
            pass
        return info

    def attributes(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    def files(self) -> list[Path]:
        """The file, and every file the arrays opened so far read from:
        external-link targets, virtual datasets' sources, external raw files."""
        found = [self.path]
        seen = {os.path.realpath(self.path)}

        def add(p) -> None:
            if p is not None and os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                found.append(Path(p))

        for ds in self._datasets.values():
            try:
                add(ds.file.filename)
                for item in ds.external or []:
                    add(self._external_file(ds, item[0]))
                for _name, where in self._sources(ds):
                    add(where)
            except Exception:
                continue
        return found

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._datasets.clear()
        self._file.close()


_plugins_loaded = False


def _load_plugins() -> None:
    """Register the filters of ``hdf5plugin`` when it is installed (only when
    an array needs a filter HDF5 lacks: it is not imported otherwise)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    try:
        import hdf5plugin  # noqa: F401
    except Exception:
        pass


# Chunk size aimed at for compressed HDF5 output: reading one row inflates its
# whole chunk, so random row access (a shuffled DataLoader) wants small ones.
# bench/bench_chunking.py (12 KiB rows, README Performance): 64 KiB chunks
# (gzip with shuffle) read random rows 20-25x faster than 1 MiB chunks
# without shuffle, at 0.7-1.3x uncompressed output's rate, in less CPU time.
COMPRESSED_CHUNK_BYTES = {"gzip": 64 << 10, "lzf": 64 << 10}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pandas_frame(path: Path, key: str, group: h5py.Group, option: str) -> str | None:
    """What to do with a pandas DataFrame that ``to_hdf`` wrote at ``key``
    (its ``pandas_type`` attribute says so); None for other groups."""
    kind = _text(group.attrs.get("pandas_type", b""))
    if not kind.startswith("frame"):
        return None
    where = f"{path}: '{key}' is a pandas DataFrame (to_hdf, {kind.replace('_', ' ')})"
    if kind == "frame" and "block0_values" in group:  # fixed format: each dtype's columns in one 2-D block
        return (
            f"{where}; its columns of one dtype are the array '{key.rstrip('/')}/block0_values' (their names in "
            f"block0_items): pass it with {option}, or write the frame with df.to_parquet and read columns by name"
        )
    return (
        f"{where}, stored as one table of records, not as arrays; write it with df.to_parquet and pass the columns "
        f"with {option} 'a,b,c' (pip install 'mixup-cli[arrow]'), or save df.to_numpy() as .npy"
    )


def _example_member(group: h5py.Group) -> str | None:
    """A member of ``group`` to name as an example: in the order of an AnnData
    dataframe's columns (``column-order``) when it has one, never its row index
    (the ``_index`` attribute names it: one identifier a row, not a class)."""
    try:
        index = _text(group.attrs.get("_index", "_index"))
        order = group.attrs.get("column-order")
        names = [_text(n) for n in np.atleast_1d(order)] if order is not None and np.size(order) else []
        names += [n for n in group.keys() if n not in names]
        return next((n for n in names if n not in (index, "_index") and n in group), None)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError):
        return None


def chunk_rows_for(spec: ArraySpec, options: WriteOptions, *, compressed: bool = True) -> int:
    """Rows per chunk: ``--chunk-rows`` when given (``base.check_chunk_rows``
    saw it divide the block rows), else about ``chunk_bytes`` (at most
    ``COMPRESSED_CHUNK_BYTES`` for compressed output, unless not
    ``compressed``); always dividing the block size and at most the rows."""
    target = options.chunk_bytes
    if compressed and options.compression in COMPRESSED_CHUNK_BYTES:
        target = min(target, COMPRESSED_CHUNK_BYTES[options.compression])
    limit = max(1, target // max(1, spec.row_bytes))
    if options.chunk_rows:
        limit = options.chunk_rows
    limit = min(limit, spec.rows)
    if options.block_rows:
        divisors = [d for d in range(1, min(limit, options.block_rows) + 1) if options.block_rows % d == 0]
        return divisors[-1]
    return max(1, limit)


# No HDF5 chunk cache on output: rows are written in whole runs anyway, and
# after a failed write (disk full) a file with dirty cached chunks crashes HDF5
# when it is closed (lzf included: it then writes each chunk through the
# filter at once).
WRITER_CACHE = {"rdcc_nbytes": 0}


def plain_chunk_offsets(ds, chunk_rows: int) -> np.ndarray | None:
    """Byte offset of each chunk of ``ds`` (chunks of ``chunk_rows`` whole
    rows), found in one pass over its chunk index, when all are allocated
    and hold plain bytes (an older partial may have late allocation); else None."""
    if ds.dtype.kind not in "fiub" or ds.id.get_create_plist().get_nfilters():
        return None
    n = -(-ds.shape[0] // chunk_rows)
    offsets = np.full(n, -1, dtype=np.int64)
    chunk_bytes = chunk_rows * int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize

    def found(info):
        if info.size == chunk_bytes and not info.filter_mask:
            offsets[info.chunk_offset[0] // chunk_rows] = info.byte_offset

    try:
        ds.id.chunk_iter(found)
    except (AttributeError, RuntimeError, ValueError):
        return None
    return offsets if n and (offsets >= 0).all() else None


def shuffle_for(options: WriteOptions) -> bool:
    """Whether HDF5's byte-shuffle filter runs before compression: on for
    gzip unless turned off (it groups the like bytes of numbers, so deflate
    finds more to share), off without compression (it would do nothing)."""
    if options.compression == "none":
        return False
    return options.compression == "gzip" if options.shuffle is None else bool(options.shuffle)


def _shuffled_deflate(piece: np.ndarray, itemsize: int) -> bytes:
    """What HDF5's shuffle then deflate filters store for one chunk: byte k
    of every element together, for k = 0..itemsize-1, then zlib at GZIP_LEVEL.
    (A chunk holds whole elements, so there is no tail of loose bytes.)"""
    if itemsize > 1:
        piece = np.frombuffer(piece, np.uint8).reshape(-1, itemsize).T.copy()
    return zlib.compress(piece, GZIP_LEVEL)


class Writer(base.Writer):
    """Chunked HDF5 output that survives a kill.

    Uncompressed output has every chunk allocated when the file is created
    (``H5D_ALLOC_TIME_EARLY``, no fill); the file is then flushed, and rows
    are written with ``os.pwrite`` at the chunks' offsets, found once: the
    HDF5 metadata on disk never changes while rows stream, so a kill at any
    instant leaves a file that opens, holding every row written.

    Compressed chunks vary in size, so their index grows as they are
    written. Writes that cover whole gzip chunks skip HDF5's filter
    pipeline: each chunk is deflated by a small pool of threads (zlib
    releases the GIL) and stored with ``write_direct_chunk``; the bytes are
    what the deflate filter stores, so any HDF5 reader decodes them. Other
    writes (edges of a chunk, lzf) go through HDF5. The metadata reaches the
    disk at each ``flush`` (the journal records only tasks flushed before
    it); a kill during a flush can leave a file that does not open, which
    ``--resume`` then starts over.
    """

    format_name = "hdf5"
    compressions = ("none", "gzip", "lzf")

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        self._failed = False
        try:
            # Created where nothing is (HDF5's exclusive create: O_CREAT | O_EXCL, never
            # through a link); whatever sat at this temporary name is removed first.
            beside.clear(self.path)
            self._file = h5py.File(self.path, "x", **WRITER_CACHE)
        except OSError as exc:
            if _is_lock_error(exc):
                raise OutputError(f"{self.path}: cannot create HDF5 file: {_LOCK_HINT}") from None
            raise OutputError(f"{self.path}: cannot create HDF5 file: {exc}") from None
        compression = None if options.compression == "none" else options.compression
        opts = GZIP_LEVEL if options.compression == "gzip" else None
        shuffle = shuffle_for(options)
        self._datasets = {}
        self._chunk_rows: dict[str, int] = {}
        try:
            for key, spec in specs.items():
                chunks, dcpl = None, None
                if spec.rows and all(spec.row_shape):
                    chunks = (chunk_rows_for(spec, options),) + spec.row_shape
                    self._chunk_rows[key] = chunks[0]
                    if compression is None:
                        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                self._datasets[key] = self._file.create_dataset(
                    key,
                    shape=spec.shape,
                    dtype=spec.dtype,
                    chunks=chunks,
                    compression=compression,
                    compression_opts=opts,
                    shuffle=shuffle,
                    dcpl=dcpl,
                    fill_time="never" if dcpl is not None else None,
                )
            self.flush()  # the file is complete on disk before any row is written
        except BaseException:
            self._failed = True
            raise
        self._start_direct_writes()

    def _start_direct_writes(self) -> None:
        self._direct = self.options.compression in ("none", "gzip")
        self._pool = None
        self._deflaters = max(1, os.cpu_count() or 1)
        if self.options.compression == "gzip":
            self._pool = ThreadPoolExecutor(max_workers=self._deflaters)
        # Uncompressed: file offset of every chunk, per array (None: through HDF5).
        self._offsets: dict[str, np.ndarray | None] = {}
        self._fd: int | None = None
        if self.options.compression == "none":
            for key, c in self._chunk_rows.items():
                self._offsets[key] = plain_chunk_offsets(self._datasets[key], c)
            if any(v is not None for v in self._offsets.values()):
                self._fd = self._same_file(os.O_WRONLY)

    def _same_file(self, flags: int) -> int:
        """A second descriptor on the file HDF5 has open, by name but checked
        to be that very file (no link, not swapped since)."""
        fd = os.open(self.path, flags | beside.NOFOLLOW | beside.CLOEXEC)
        try:
            st, held = os.fstat(fd), os.fstat(self._file.id.get_vfd_handle())
        except BaseException:
            os.close(fd)
            raise
        if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)
            raise OutputError(f"{self.path}: was replaced by another file while mixup wrote it; run again")
        return fd

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        try:
            self._write(key, start, data)
        except BaseException:
            self._failed = True
            raise

    def _write(self, key: str, start: int, data: np.ndarray) -> None:
        n = len(data)
        if not n:
            return
        ds = self._datasets[key]
        data = np.ascontiguousarray(data, dtype=ds.dtype)
        c = self._chunk_rows.get(key)
        offsets = self._offsets.get(key)
        if offsets is not None:
            self._pwrite(offsets, start, data, c)
            return
        if not self._direct or c is None:
            ds.write_direct(data, dest_sel=np.s_[start : start + n])
            return
        # Rows [first, last) form whole chunks; the edges go through HDF5.
        first = -(-start // c) * c
        last = max(first, ((start + n) // c) * c)
        if first > start:
            ds.write_direct(data[: min(n, first - start)], dest_sel=np.s_[start : min(start + n, first)])
        if last > first:
            self._write_chunks(ds, first, data[first - start : last - start], c)
        if start + n > last >= first:
            ds.write_direct(data[last - start :], dest_sel=np.s_[last : start + n])

    def _pwrite(self, offsets: np.ndarray, start: int, data: np.ndarray, c: int) -> None:
        """Rows into their chunks' bytes, outside HDF5 (and its global lock)."""
        row_bytes = data.nbytes // len(data)
        raw = memoryview(data.reshape(-1)).cast("B")
        row, stop = start, start + len(data)
        while row < stop:
            chunk = row // c
            end = min(stop, (chunk + 1) * c)
            at = int(offsets[chunk]) + (row - chunk * c) * row_bytes
            piece = raw[(row - start) * row_bytes : (end - start) * row_bytes]
            while len(piece):
                written = os.pwrite(self._fd, piece, at)
                piece, at = piece[written:], at + written
            row = end

    def _write_chunks(self, ds, first: int, rows: np.ndarray, c: int) -> None:
        tail = (0,) * (rows.ndim - 1)
        pieces = [rows[i : i + c] for i in range(0, len(rows), c)]
        if self._pool is None:
            for i, piece in enumerate(pieces):
                ds.id.write_direct_chunk((first + i * c,) + tail, piece)
            return
        # Deflate a few chunks ahead of the one being written: bounded memory.
        window = 2 * self._deflaters
        if ds.shuffle:  # the dataset's filters say so (also on a reopened file)
            compress, arg = _shuffled_deflate, ds.dtype.itemsize
        else:
            compress, arg = zlib.compress, GZIP_LEVEL
        futures = [self._pool.submit(compress, piece, arg) for piece in pieces[:window]]
        for i in range(len(pieces)):
            if i + window < len(pieces):
                futures.append(self._pool.submit(compress, pieces[i + window], arg))
            ds.id.write_direct_chunk((first + i * c,) + tail, futures[i].result())
            futures[i] = None

    def set_attributes(self, attrs: dict) -> None:
        for name, value in attrs.items():
            self._file.attrs[name] = value

    def flush(self) -> None:
        try:
            if getattr(self, "_fd", None) is not None:
                os.fsync(self._fd)
            self._file.flush()
            try:
                os.fsync(self._file.id.get_vfd_handle())
            except (TypeError, ValueError):
                pass
        except BaseException:
            self._failed = True
            raise

    def read(self, key: str, start: int, stop: int) -> np.ndarray | None:
        # Through HDF5, whichever way the rows were written: on a reopened file
        # nothing of them is cached, so this reads what the disk holds.
        return self._datasets[key][start:stop]

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        # A kill during a flush of compressed output may leave a file that does not open.
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        self._failed = False
        if not beside.plain_file(self.path):
            raise cls.damaged(self.path, "not a regular file")
        try:
            self._file = h5py.File(self.path, "r+", **WRITER_CACHE)
        except OSError as exc:
            if _is_lock_error(exc):
                raise OutputError(f"{self.path}: cannot resume: {_LOCK_HINT}") from None
            raise cls.damaged(self.path, "HDF5 cannot open it") from None
        if not beside.same_file(self._file.id.get_vfd_handle(), self.path):  # a link swapped in meanwhile
            self._file.close()
            raise cls.damaged(self.path, "replaced while it was opened")
        try:
            self._datasets = {key: self._file[key] for key in specs}
            for key, spec in specs.items():
                ds = self._datasets[key]
                if tuple(ds.shape) != tuple(spec.shape) or ds.dtype != spec.dtype:
                    raise ValueError(f"array '{key}' has the wrong shape or dtype")
            self._chunk_rows = {key: ds.chunks[0] for key, ds in self._datasets.items() if ds.chunks}
            self._start_direct_writes()
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            self._file.close()
            raise cls.damaged(self.path, str(exc) or "arrays missing") from None
        return self

    def _release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._release()
        if self._file.id.valid:
            self._file.flush()
            self._file.close()

    def abort(self) -> None:
        """After a failed write (disk full) HDF5 may crash when it flushes
        the file on closing it, now or at exit: the partial is cut to zero
        bytes first, so that the flush finds room, then closed (the caller
        removes it)."""
        try:
            self._release()
        except BaseException:
            pass
        if not getattr(self, "_file", None) or not self._file.id.valid:
            return
        if self._failed:
            try:
                os.ftruncate(self._file.id.get_vfd_handle(), 0)
            except (OSError, TypeError, ValueError):
                pass
        try:
            self._file.close()
        except BaseException:
            pass

    def files(self) -> list[Path]:
        return [Path(".")]
