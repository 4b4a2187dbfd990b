"""WebDataset output: ``OUT.tar``, one sample per output row.

Sample ``KEY`` (the output row number, zero-padded to 9 digits or more:
``000000123``) holds, in this order:

- ``KEY.png`` (or ``KEY.jpg`` with ``--image-format jpeg``): the mixed image,
  row ``KEY`` of x (uint8, ``(H, W)`` or ``(H, W, C)`` with C 1, 3 or 4: gray,
  RGB, RGBA);
- ``KEY.cls``: the class, only when every row's target is one class exactly
  (a one-hot row: original rows, ``--pairing within-class``); then every
  sample has one, so a pipeline's ``to_tuple("png", "cls")`` works on all of
  them, never on some;
- ``KEY.json``: ``lam``, ``partner``, ``sources`` (the names of the row's own
  input sample and of its partner: file names under IN for a folder of
  images, sample keys for WebDataset shards (``SHARD.tar:KEY`` for a folder
  of them), input row numbers otherwise), ``target`` (the mixed target, a
  list of floats: soft labels have no place in ``.cls``), ``box`` for CutMix
  (``[y0, x0, y1, x1]``, half-open, in pixels) and ``own`` for ``--balance``.

What the output holds as arrays (shapes, dtypes, which json field holds
which array, the image format) and the run's version, run id and class
names are in the tar's PAX global header under ``mixup``, which tar readers
(and ``webdataset``) read past; ``Reader`` reads the arrays back from it for
``verify`` and ``inspect``.

Rows are staged as ``.npy`` memory maps beside OUT while the run writes
blocks in any order (as ``.npz`` and Parquet output: ``--resume`` reopens
them), then packed in row order, a block at a time (images encoded by a
thread pool), into a new file when the run completes. The archive's bytes
depend only on the data and Pillow's encoders: members have a fixed time,
owner and mode.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from mixup_cli.core import beside, stopping
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import base, npz
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.io.npyfile import member_path, memmap_npy
from mixup_cli.record import atomic

EXTRA = "pip install 'mixup-cli[images]'"
META_KEY = "mixup"  # the PAX global header's field holding what the output records
IMAGE_FORMATS = ("png", "jpeg")
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
DEFAULT_JPEG_QUALITY = 90
PROVENANCE = ("lam", "partner", "box", "own")
KEY_DIGITS = 9
PACK_ROWS = 1024  # rows encoded and added at once when packing
MAX_THREADS = 8
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
ARRAY_OUTPUTS = ".h5, .npz, .zarr, .parquet or a directory of .npy files"


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ParameterError(
            f"WebDataset output (.tar) encodes images with Pillow; install it with {EXTRA}", "OUT"
        ) from None
    return Image


def sample_key(row: int, rows: int) -> str:
    return f"{row:0{max(KEY_DIGITS, len(str(max(rows - 1, 0))))}d}"


def check_specs(path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> None:
    """Refuse, in one line, arrays a tar of images cannot hold."""
    x_key = next(iter(specs))
    spec = specs[x_key]
    shape, dtype = spec.row_shape, np.dtype(spec.dtype)
    images = dtype == np.uint8 and (len(shape) == 2 or (len(shape) == 3 and shape[2] in _MODES))
    if not images:
        raise ParameterError(
            f"{path}: WebDataset output (.tar) holds images, but '{x_key}' has rows of shape {shape} and dtype "
            f"{dtype}, not uint8 (H, W) or (H, W, C) with C 1, 3 or 4; choose an array output ({ARRAY_OUTPUTS})",
            "OUT",
        )
    if options.image_format == "jpeg" and len(shape) == 3 and shape[2] == 4:
        raise ParameterError(
            f"{path}: '{x_key}' has 4 channels (RGBA), which JPEG cannot hold; use --image-format png", "--image-format"
        )


def fields_of(specs: dict[str, ArraySpec]) -> dict[str, str]:
    """The json field of each array but the image: a single target is ``target``."""
    data = [key for key in list(specs)[1:] if key not in PROVENANCE]
    fields = {key: ("target" if len(data) == 1 else key) for key in data}
    fields.update({key: key for key in specs if key in PROVENANCE})
    return fields


def encode(row: np.ndarray, image_format: str, quality: int | None) -> bytes:
    """One image (uint8 (H, W) or (H, W, C)) as PNG or JPEG bytes."""
    Image = _pil()
    arr = row if row.ndim == 2 else (row[:, :, 0] if row.shape[2] == 1 else row)
    im = Image.fromarray(np.ascontiguousarray(arr))  # uint8 (H, W): L; (H, W, 3): RGB; (H, W, 4): RGBA
    buf = io.BytesIO()
    if image_format == "jpeg":
        im.save(buf, format="JPEG", quality=quality or DEFAULT_JPEG_QUALITY)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes, row_shape: tuple[int, ...], label: str) -> np.ndarray:
    """Image bytes back to a row of x (``row_shape``); InputError naming ``label``."""
    Image = _pil()
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # Pillow's OSError, SyntaxError, ValueError...
        raise InputError(f"{label}: cannot decode this image ({str(exc) or type(exc).__name__})") from None
    if arr.size != int(np.prod(row_shape)):
        raise InputError(f"{label}: an image of shape {arr.shape}, where the output's images are {row_shape}")
    return arr.reshape(row_shape)


def _header(name: str, size: int) -> bytes:
    """The ustar header of a regular file ``name`` of ``size`` bytes: time 0,
    mode 0644, owner 0/0 without names (fixed: the same data gives the same
    archive). Written here, not by tarfile, which takes ten times as long."""
    head = bytearray(tarfile.BLOCKSIZE)
    head[0:100] = name.encode().ljust(100, b"\0")
    head[100:108] = b"0000644\0"
    head[108:116] = head[116:124] = b"0000000\0"  # owner 0/0; no device numbers, as tarfile writes them
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"00000000000\0"
    head[148:156] = b" " * 8  # the checksum counts its own field as spaces
    head[156:157] = tarfile.REGTYPE
    head[257:265] = tarfile.POSIX_MAGIC
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class _Pool:
    """Images encoded or decoded a block at a time by a few threads (Pillow releases the GIL)."""

    def __init__(self):
        self._threads = max(1, min(MAX_THREADS, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn, items) -> list:
        items = list(items)
        if len(items) <= 1 or self._threads == 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mixup-tar")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class Writer(npz.ReadBackWriter):
    """``OUT.tar``: arrays staged as ``.npy`` beside OUT, packed into samples at the end."""

    format_name = "webdataset"
    compressions = ("none",)

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        _pil()
        check_specs(path, specs, options)
        super().__init__(path, specs, options)
        self._attrs: dict = {}
        self._names = None
        self._segment_rows: int | None = None
        self._row_offset = 0

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        _pil()
        check_specs(path, specs, options)
        self = super().reopen(path, specs, options)
        self._attrs, self._names, self._segment_rows, self._row_offset = {}, None, None, 0
        if self._maps is None and options.image_format == "jpeg":
            # Packed already: JPEG keeps other pixels than the rows the journal's digests are of.
            raise cls.damaged(path, "packed with JPEG images, which cannot be checked against the journal")
        return self

    @staticmethod
    def packed_reader(path: Path) -> Reader:
        return Reader(path)

    def set_attributes(self, attrs: dict) -> None:
        self._attrs.update(attrs)

    def set_lineage(self, names, segment_rows: int, row_offset: int = 0) -> None:
        """``names(rows)``: the input samples' names of input rows (a list of
        str), or None for row numbers; ``segment_rows``: input rows per copy
        (a set's output: its own input's); ``row_offset``: the input row of
        its first row (a set's output: its input's offset in the set)."""
        self._names, self._segment_rows, self._row_offset = names, segment_rows, row_offset

    def _metadata(self, fields: dict[str, str], cls: bool) -> str:
        record = {k: v for k, v in self._attrs.items() if k != "class_names"}
        if "class_names" in self._attrs:
            record["class_names"] = json.loads(self._attrs["class_names"])
        x_key = next(iter(self.specs))
        record["image"] = {
            "array": x_key,
            "format": self.options.image_format,
            "extension": EXTENSIONS[self.options.image_format],
        }
        if self.options.image_format == "jpeg":
            record["image"]["quality"] = self.options.jpeg_quality or DEFAULT_JPEG_QUALITY
        record["arrays"] = {
            key: {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).str}
            | ({"field": fields[key]} if key in fields else {"member": EXTENSIONS[self.options.image_format]})
            for key, spec in self.specs.items()
        }
        record["cls"] = cls
        return json.dumps(record, sort_keys=True)

    def _one_class(self, arrays: dict, fields: dict[str, str]) -> bool:
        """Whether every row's target is one class exactly (a one-hot row of floats)."""
        targets = [key for key, field in fields.items() if field == "target"]
        if len(targets) != 1:
            return False
        y = arrays[targets[0]]
        if y.ndim != 2 or y.dtype.kind != "f" or y.shape[1] < 1:
            return False
        for s in range(0, len(y), 65536):
            block = np.asarray(y[s : s + 65536])
            if not ((block.max(axis=1) == 1) & (block.sum(axis=1) == 1) & (block.min(axis=1) == 0)).all():
                return False
        return True

    def _pack(self) -> None:
        arrays = {key: memmap_npy(self._staging / member_path(key)) for key in self.specs}
        fields = fields_of(self.specs)
        cls = self._one_class(arrays, fields)
        rows = next(iter(self.specs.values())).rows
        starts = list(range(0, rows, PACK_ROWS))
        pool, ahead = _Pool(), ThreadPoolExecutor(1, thread_name_prefix="mixup-tar-ahead")
        try:
            with os.fdopen(beside.create_file(self.path), "w+b") as fh:
                fh.write(tarfile.TarInfo.create_pax_global_header({META_KEY: self._metadata(fields, cls)}))
                # The next block is encoded while this one is added: two blocks in memory at most.
                pending = ahead.submit(self._encode_rows, pool, arrays, fields, starts[0], min(rows, PACK_ROWS))
                for start in starts:
                    # A safe point: stopped here, the staged rows stay for --resume, which packs again.
                    atomic.test_pause("packing")
                    stopping.check()
                    images, records = pending.result()
                    if start + PACK_ROWS < rows:
                        after = start + PACK_ROWS
                        pending = ahead.submit(
                            self._encode_rows, pool, arrays, fields, after, min(rows, after + PACK_ROWS)
                        )
                    fh.write(self._samples(start, images, records, cls))
                fh.write(bytes(2 * tarfile.BLOCKSIZE))  # the end of the archive
                fh.write(bytes(-fh.tell() % tarfile.RECORDSIZE))  # padded to whole records, as tar does
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            ahead.shutdown(wait=True)
            pool.close()

    def _encode_rows(self, pool: _Pool, arrays: dict, fields: dict, start: int, stop: int):
        """The encoded images and the json records of rows ``start:stop``."""
        block = np.asarray(arrays[next(iter(self.specs))][start:stop])
        images = pool.map(
            partial(encode, image_format=self.options.image_format, quality=self.options.jpeg_quality), block
        )
        return images, self._records(arrays, fields, start, stop)

    def _samples(self, start: int, images: list, records: list, cls: bool) -> bytearray:
        """The tar members of the samples from row ``start``: image, class (``cls``), json."""
        rows = next(iter(self.specs.values())).rows
        ext = EXTENSIONS[self.options.image_format]
        out = bytearray()
        for i, (image, record) in enumerate(zip(images, records)):
            key = sample_key(start + i, rows)
            members = [(f"{key}.{ext}", image)]
            if cls:
                members.append((f"{key}.cls", str(int(np.argmax(record["target"]))).encode()))
            members.append((f"{key}.json", json.dumps(record).encode()))
            for name, data in members:
                out += _header(name, len(data))
                out += data
                out += bytes(-len(data) % tarfile.BLOCKSIZE)
        return out

    def _records(self, arrays: dict, fields: dict[str, str], start: int, stop: int) -> list[dict]:
        """The json of rows ``start:stop``: lam, partner, sources, then the other arrays."""
        values = {key: np.asarray(arrays[key][start:stop]).tolist() for key in fields}
        own = np.asarray(arrays["own"][start:stop]) if "own" in arrays else None
        if own is None:
            n = self._segment_rows or self.specs[next(iter(self.specs))].rows
            own = np.arange(start, stop, dtype=np.int64) % n + self._row_offset
        partner = np.asarray(arrays["partner"][start:stop]) if "partner" in arrays else own
        sources = list(zip(self._names_of(own), self._names_of(partner)))
        records = []
        for i in range(stop - start):
            record = {"lam": values["lam"][i], "partner": values["partner"][i], "sources": list(sources[i])}
            record.update({fields[key]: values[key][i] for key in fields if key not in ("lam", "partner")})
            records.append(record)
        return records

    def _names_of(self, rows: np.ndarray) -> list:
        found = self._names(rows) if self._names is not None else None
        return list(found) if found is not None else [int(r) for r in rows]

    def stored_digests(self) -> dict[str, tuple[str, str]]:
        """JPEG output: x's SHA-256 (``digests`` scheme) as the packed file
        holds it, decoded, with a note for the sidecar; nothing for PNG, which
        holds the rows as they were written."""
        if self.options.image_format != "jpeg":
            return {}
        from mixup_cli.record import digests

        x_key = next(iter(self.specs))
        rows = self.specs[x_key].rows
        segment = self._segment_rows or rows
        bounds = digests.block_bounds(segment, self.options.block_rows or segment, rows // segment)
        with Reader(self.path) as reader:
            found = digests.combine([digests.of_rows({x_key: reader.read(x_key, a, b)})[x_key] for a, b in bounds])
        quality = self.options.jpeg_quality or DEFAULT_JPEG_QUALITY
        return {x_key: (found, f"JPEG (quality {quality}): the SHA-256 of the images as decoded from the file")}


def is_output(path: Path) -> bool:
    """Whether the file at ``path`` is a tar mixup wrote (its PAX global header has ``mixup``)."""
    try:
        with tarfile.open(path, "r:") as tar:
            tar.next()
            return META_KEY in tar.pax_headers
    except (tarfile.TarError, OSError, EOFError):
        return False


def _plain_members(path: Path, at: int) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of the members from byte ``at`` on, read from
    their ustar headers directly (tarfile's parsing costs ten times as much);
    None at a header that is not a plain file's with a checked sum (PAX or GNU
    extensions: then tarfile reads them)."""
    found = []
    with open(path, "rb", buffering=0) as fh:
        end = os.fstat(fh.fileno()).st_size
        while at + 512 <= end:
            head = os.pread(fh.fileno(), 512, at)
            if head == bytes(512):
                return found  # the end-of-archive blocks
            if len(head) < 512 or head[156:157] not in (b"0", b"\0") or head[124] & 0x80:
                return None
            try:
                checksum = int(head[148:156].split(b"\0")[0].strip() or b"-1", 8)
                size = int(head[124:136].split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                return None
            if checksum != sum(head[:148]) + 256 + sum(head[156:]):
                return None
            name, prefix = head[:100].split(b"\0")[0], head[345:500].split(b"\0")[0]
            found.append(((prefix + b"/" + name if prefix else name).decode("utf-8", "replace"), at + 512, size))
            at += 512 + -(-size // 512) * 512
    return None


class Reader(base.Reader):
    """A tar mixup wrote, read back as its arrays: x from the images, the
    rest from each sample's json (``verify``, ``inspect``, ``--resume``)."""

    format_name = "webdataset"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            with tarfile.open(self.path, "r:") as tar:
                first = tar.next()
                self._meta = meta = json.loads(tar.pax_headers[META_KEY])
                self._arrays = {
                    key: (ArraySpec(tuple(a["shape"]), np.dtype(a["dtype"])), a.get("field"))
                    for key, a in meta["arrays"].items()
                }
                members = _plain_members(self.path, first.offset) if first is not None else []
                if members is None:  # headers only tarfile reads (another tool rewrote the file)
                    members = [(m.name, m.offset_data, m.size) for m in [first, *iter(tar.next, None)]]
            self._index(members)
        except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{self.path}: not a complete WebDataset output of mixup ({exc})") from None
        self._fd = os.open(self.path, os.O_RDONLY)
        self._pool = _Pool()
        self._cache, self._cache_lock = None, threading.Lock()

    def _index(self, members) -> None:
        """Where each sample's image and json lie: (offset, size) by row."""
        rows = next(iter(self._arrays.values()))[0].rows
        ext = self._meta["image"]["extension"]
        image, record = np.zeros((rows, 2), np.int64), np.zeros((rows, 2), np.int64)
        seen = np.zeros((rows, 2), bool)
        for name, offset, size in members:
            stem, _, suffix = name.partition(".")
            if stem.isdigit() and int(stem) < rows and suffix in (ext, "json"):
                col = 0 if suffix == ext else 1
                (image if col == 0 else record)[int(stem)] = (offset, size)
                seen[int(stem), col] = True
        if not seen.all():
            missing = int(np.flatnonzero(~seen.all(axis=1))[0])
            raise ValueError(f"sample {sample_key(missing, rows)} is missing or incomplete")
        self._image, self._record = image, record

    def _bytes(self, at: int, size: int, row: int) -> bytes:
        data = os.pread(self._fd, int(size), int(at))
        if len(data) != size:
            raise InputError(f"{self.path}: the file ended in sample {row} (truncated?)")
        return data

    def keys(self) -> list[str]:
        return list(self._arrays)

    def spec(self, key: str) -> ArraySpec:
        return self._arrays[key][0]

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        spec, field = self._arrays[key]
        stop = min(stop, spec.rows)
        start = min(start, stop)
        if field is None:  # the images
            rows = range(start, stop)
            ext = self._meta["image"]["extension"]

            def one(r):
                label = f"{self.path}:{sample_key(r, spec.rows)}.{ext}"
                return decode(self._bytes(*self._image[r], r), spec.row_shape, label)

            found = self._pool.map(one, rows)
            return np.stack(found) if found else np.empty((0,) + spec.row_shape, spec.dtype)
        records = self._parsed(start, stop)
        try:
            values = [record[field] for record in records]
        except (KeyError, TypeError):
            bad = next(
                r for r, record in enumerate(records, start) if not isinstance(record, dict) or field not in record
            )
            raise InputError(f"{self.path}:{sample_key(bad, spec.rows)}.json: has no '{field}'") from None
        return np.asarray(values, dtype=spec.dtype).reshape((stop - start,) + spec.row_shape)

    def _parsed(self, start: int, stop: int) -> list:
        """The json of samples ``start:stop``, the last range kept: a check reads
        each array of the same rows in turn."""
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == (start, stop):
                return self._cache[1]
        records = []
        for r in range(start, stop):
            try:
                records.append(json.loads(self._bytes(*self._record[r], r)))
            except ValueError:
                raise InputError(f"{self.path}:{sample_key(r, len(self._record))}.json: not valid JSON") from None
        with self._cache_lock:
            self._cache = ((start, stop), records)
        return records

    def as_stored(self, key: str, data: np.ndarray) -> np.ndarray:
        """Rows as this output would hold them once written: JPEG images
        encoded and decoded again (lossy); everything else as it is."""
        spec, field = self._arrays[key]
        image = self._meta["image"]
        if field is not None or image["format"] != "jpeg":
            return data
        quality = image.get("quality")

        def one(row):
            return decode(encode(row, "jpeg", quality), spec.row_shape, str(self.path))

        found = self._pool.map(one, data)
        return np.stack(found) if found else data

    def describe(self, key: str) -> dict:
        spec, field = self._arrays[key]
        if field is None:
            image = self._meta["image"]
            return {"member": image["extension"], **({"quality": image["quality"]} if "quality" in image else {})}
        return {"json_field": field}

    def attributes(self) -> dict:
        return {k: v for k, v in self._meta.items() if k not in ("arrays",)}

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self._pool.close()
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
