"""A folder of images (JPEG, PNG, WebP, BMP), read as uint8 NHWC ``x``.

Two layouts, as torchvision's ``ImageFolder`` has them:

- ``IN/<class>/**/*.jpg``: one folder per class; ``y`` holds the class
  index (int64) of each image, the class folders' names sorted by code point
  (``class_names``, recorded like string labels' names);
- ``IN/*.jpg``: images without classes, ``x`` alone (``--no-y``).

Files are listed in a stable order (class, then path inside the class
folder, by code point), so a run is reproducible. Each image is decoded by
Pillow (imported here only when such a folder is read: the ``images``
extra), converted to RGB (alpha dropped, grayscale repeated) or to one gray
channel (ITU-R 601-2 luma), then, with an image size, resized: ``crop`` takes
the largest centred region of the target's aspect ratio and resizes it
(``ImageOps.fit``), ``squash`` resizes the whole image; both bilinear.
Without an image size every image must have the same size already.

Rows are decoded per block read, by a pool of threads (Pillow releases the
GIL while decoding), never the whole folder at once. A file that does not
decode stops the run with its name, or with ``skip_bad`` is left out (one
decoding pass over every file when the folder is opened) and recorded.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import base
from mixup_cli.io.base import ArraySpec

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RESIZES = ("crop", "squash")
CHANNELS = ("rgb", "gray")
# Modes Pillow converts to RGB/L without losing meaning; 16-bit and float
# images (I, I;16, F) would be clipped to 8 bits, so they are refused.
_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}
MAX_THREADS = 8


@dataclass(frozen=True)
class ImageOptions:
    """How the images of a folder become rows of ``x``."""

    size: tuple[int, int] | None = None  # (width, height); None: the images' own (all equal)
    resize: str = "crop"  # crop | squash
    channels: str = "rgb"  # rgb | gray
    skip_bad: bool = False  # leave out files that do not decode (else: refuse the folder)
    label: str | None = None  # WebDataset shards: cls, or json:FIELD [default: cls]
    threads: int | None = field(default=None, compare=False)  # decoding threads [default: CPUs, at most 8]

    def is_default(self) -> bool:
        return self == ImageOptions()

    def check(self) -> ImageOptions:
        if self.resize not in RESIZES:
            raise ParameterError(
                f"--image-resize must be one of {', '.join(RESIZES)}, got {self.resize!r}", "--image-resize"
            )
        if self.channels not in CHANNELS:
            raise ParameterError(
                f"--image-channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}", "--image-channels"
            )
        if self.label is not None and self.label != "cls" and not (self.label.startswith("json:") and self.label[5:]):
            raise ParameterError(f"--wds-label must be cls or json:FIELD, got {self.label!r}", "--wds-label")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ParameterError(f"--image-size must be positive, got {self.size!r}", "--image-size")
        return self


def parse_size(text) -> tuple[int, int] | None:
    """``224`` -> (224, 224); ``224x160`` -> (224, 160) (width x height);
    an int or a (width, height) pair as they are."""
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        text = "x".join(str(v) for v in text)
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1 or max(values) > 65535:
        raise ParameterError(
            f"--image-size must be SIZE or WIDTHxHEIGHT in pixels (1 to 65535), e.g. 224 or 224x160; got {text!r}",
            "--image-size",
        )
    return (values[0], values[-1])


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS


def _images_under(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden names skipped), as
    sorted relative POSIX paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(folder)
        found += [(rel / f).as_posix() for f in files if _is_image(f)]
    return sorted(found)


def looks_like_images(path: Path) -> bool:
    """Whether the directory ``path`` is a folder of images: it holds image
    files, or folders holding them, and no ``.npy`` file of its own."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    if any(e.name.endswith(".npy") for e in entries):
        return False
    if any(_is_image(e.name) and e.is_file() for e in entries):
        return True
    for e in sorted(entries, key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith("."):
            for _root, dirs, files in os.walk(e.path):
                if any(f.endswith(".npy") for f in files):
                    return False
                if any(_is_image(f) for f in files):
                    return True
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return False


def list_folder(path: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """The image files of the folder in their stable order, the class of
    each (None without class folders) and the classes' names."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except PermissionError:
        raise InputError(f"{path}: permission denied; make the folder readable") from None
    top = [e.name for e in entries if _is_image(e.name) and e.is_file()]
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    per_class = [(name, _images_under(path / name)) for name in classes]
    if not any(files for _, files in per_class):
        if not top:
            raise InputError(f"{path}: holds no images ({', '.join(EXTENSIONS)}); pass a folder of images")
        return [path / name for name in top], None, None
    if top:
        raise InputError(
            f"{path / top[0]}: an image beside the class folders of {path}; move it into its class folder "
            "(or pass a folder holding only images, read with --no-y)"
        )
    for name, files in per_class:
        if not files:
            raise InputError(
                f"{path / name}: a class folder with no images ({', '.join(EXTENSIONS)}); "
                "add its images or move the folder out of the input"
            )
    files, labels = [], []
    for k, (name, found) in enumerate(per_class):
        files += [path / name / rel for rel in found]
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError("reading a folder of images needs Pillow: pip install 'mixup-cli[images]'") from None
    return Image, ImageOps


def pillow_versions() -> dict:
    """Pillow's version and its codecs' (they decide the decoded bytes)."""
    from PIL import __version__, features

    found = {"pillow": __version__}
    for codec in ("jpg", "zlib", "webp"):
        try:
            found[codec] = features.version(codec)
        except Exception:  # an old Pillow without this codec's version
            found[codec] = None
    return found


def decode(path, options: ImageOptions, name: str | None = None) -> np.ndarray:
    """The image at ``path`` (a path or a binary file object; ``name`` tells
    it in messages) as a uint8 (H, W, C) array, as a row of ``x``.

    Raises InputError naming the file if it does not decode."""
    Image, ImageOps = _pil()
    name = name or str(path)
    try:
        with Image.open(path) as im:
            if im.mode not in _MODES:
                raise InputError(
                    f"{name}: a {im.mode} image (more than 8 bits a channel); "
                    "convert it to 8-bit, or pass --skip-bad-images to leave it out"
                )
            im.load()
            im = im.convert("RGB" if options.channels == "rgb" else "L")
            if options.size is not None and im.size != options.size:
                if options.resize == "crop":
                    im = ImageOps.fit(im, options.size, method=getattr(Image, "Resampling", Image).BILINEAR)
                else:
                    im = im.resize(options.size, getattr(Image, "Resampling", Image).BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except Exception as exc:  # Pillow's OSError, SyntaxError, ValueError, DecompressionBombError...
        detail = str(exc) or type(exc).__name__
        raise InputError(
            f"{name}: cannot decode this image ({detail}); replace the file, or pass --skip-bad-images to leave it out"
        ) from None
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def header_size(path, name: str | None = None) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it."""
    Image, _ = _pil()
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:
        raise InputError(
            f"{name or path}: cannot read this image ({str(exc) or type(exc).__name__}); replace the file, "
            "or pass --skip-bad-images to leave it out"
        ) from None


def open_reader(path: Path, options: ImageOptions | None = None, fast: bool = True) -> Reader:
    """``fast=False`` (verify): each image's bytes read whole by Python and
    decoded one at a time in the caller's thread, apart from the run's path
    (Pillow opening the file, a thread pool filling the block)."""
    return Reader(path, options or ImageOptions(), fast=fast)


class Reader(base.Reader):
    """``x`` (uint8, N x H x W x C) and, with classes, ``y`` (int64): one row
    per item (here an image file; ``webdataset.Reader``: a tar member)."""

    format_name = "images"
    # close() ends the decoding threads (and WebDataset's descriptors); a closed reader
    # reads again, starting them anew, without listing the files again (sets/reader.py).
    reopens_after_close = True
    _what = "a folder of images"
    _unlabelled = "images without class folders have no labels (put them in one folder per class)"

    def __init__(self, path: Path, options: ImageOptions, fast: bool = True):
        super().__init__(path)
        self.options = options.check()
        _pil()  # the extra's message before any work
        self._fast = fast
        self._threads = (options.threads or max(1, min(MAX_THREADS, os.cpu_count() or 1))) if fast else 1
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        items, labels, names = self._list()
        self.skipped: list[dict] = []
        if options.skip_bad:
            items, labels = self._drop_bad(items, labels, names)
        self._items = items
        self._labels = labels
        if names is not None:
            self.class_names = names
        self._shape = self._row_shape()

    # ------------------------------------------------------------ items

    def _list(self) -> tuple[list, np.ndarray | None, list[str] | None]:
        """The items in their stable order, the class of each, the classes' names."""
        return list_folder(self.path)

    def _source(self, item):
        """What Pillow opens for ``item``: a path or a binary file object."""
        if self._fast:
            return item
        try:
            return io.BytesIO(Path(item).read_bytes())
        except OSError as exc:
            raise InputError(f"{item}: cannot read it ({exc.strerror or exc})") from None

    def _name(self, item) -> str:
        """``item`` in the sidecar (absolute)."""
        return str(Path(item).resolve())

    def _label(self, item) -> str:
        """``item`` in messages (under IN as given)."""
        return str(item)

    def _decode(self, item) -> np.ndarray:
        return decode(self._source(item), self.options, self._label(item))

    def _header_size(self, item) -> tuple[int, int]:
        return header_size(self._source(item), self._label(item))

    def _drop_bad(self, items, labels, names):
        """--skip-bad-images: the items that decode (all decoded once), the others recorded."""
        good = self._decodable(items)
        self.skipped = [{"path": self._name(f), "reason": reason} for f, reason in zip(items, good) if reason]
        keep = np.array([reason is None for reason in good], dtype=bool)
        items = [f for f, ok in zip(items, keep) if ok]
        labels = labels[keep] if labels is not None else None
        if not items:
            raise InputError(f"{self.path}: none of its images decodes; nothing to mix")
        if labels is not None and names is not None:
            missing = sorted(set(range(len(names))) - set(labels.tolist()))
            if missing:
                raise InputError(
                    f"{self.path / names[missing[0]]}: none of this class's images decodes; "
                    "replace them or move the folder out of the input"
                )
        return items, labels

    # ------------------------------------------------------------ decoding

    def _map(self, fn, items):
        if len(items) <= 1 or self._threads == 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mixup-images")
        return list(self._pool.map(fn, items))

    def _decodable(self, items: list) -> list[str | None]:
        """For each item, None if it decodes as a row would be, else why not."""

        def attempt(item):
            try:
                self._decode(item)
            except InputError as exc:
                return str(exc).split(": ", 1)[-1].split("; ")[0]
            return None

        out: list[str | None] = []
        for s in range(0, len(items), 256):  # bounded: a few hundred decoded images in flight at most
            out += self._map(attempt, items[s : s + 256])
        return out

    def _row_shape(self) -> tuple[int, int, int]:
        channels = 3 if self.options.channels == "rgb" else 1
        if self.options.size is not None:
            w, h = self.options.size
            return (h, w, channels)
        items = self._items
        sizes = []
        for s in range(0, len(items), 1024):
            sizes += self._map(self._header_size, items[s : s + 1024])
        first = sizes[0]
        for item, size in zip(items, sizes):
            if size != first:
                raise InputError(
                    f"{self._label(items[0])} is {first[0]}x{first[1]} but {self._label(item)} is "
                    f"{size[0]}x{size[1]}; images of different sizes need --image-size WIDTHxHEIGHT (or SIZE) "
                    "to resize them to one"
                )
        return (first[1], first[0], channels)

    def _decode_into(self, out: np.ndarray, items: list) -> None:
        def one(i):
            arr = self._decode(items[i])
            if arr.shape != self._shape:
                w, h = arr.shape[1], arr.shape[0]
                raise InputError(
                    f"{self._label(items[i])} is {w}x{h}, not {self._shape[1]}x{self._shape[0]} as the other "
                    "images; pass --image-size to resize them to one size"
                )
            out[i] = arr

        self._map(one, range(len(items)))

    # ------------------------------------------------------------ Reader

    def keys(self) -> list[str]:
        return ["x"] + (["y"] if self._labels is not None else [])

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        if key == "y" and self._labels is None:
            raise InputError(f"{self.path}: {self._unlabelled}; pass --no-y to mix them alone")
        if key not in self.keys():
            raise InputError(
                f"{self.path}: {self._what} holds 'x' (the images) and 'y' (their class); "
                f"there is no '{key}' to choose with {option}"
            )
        return super().require(key, option, kinds)

    def spec(self, key: str) -> ArraySpec:
        if key == "y":
            return ArraySpec((len(self._items),), np.dtype(np.int64))
        return ArraySpec((len(self._items),) + self._shape, np.dtype(np.uint8))

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self._items))
        start = min(start, stop)
        if key == "y":
            return self._labels[start:stop].copy()
        out = np.empty((stop - start,) + self._shape, np.uint8)
        self._decode_into(out, self._items[start:stop])
        return out

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if key == "y" or out.dtype != np.uint8 or not out.flags.c_contiguous:
            return super().read_into(key, start, stop, out)
        self._decode_into(out[: stop - start], self._items[start:stop])

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if key == "y":
            return self._labels[rows]
        out = np.empty((len(rows),) + self._shape, np.uint8)
        self._decode_into(out, [self._items[int(r)] for r in rows])
        return out

    def describe(self, key: str) -> dict:
        return {"images": len(self._items)} if key == "x" else {}

    def files(self) -> list[Path]:
        return list(self._items)

    def row_names(self, rows) -> list[str]:
        """The images' paths under the folder (``cat/001.jpg``), of input rows ``rows``."""
        return [Path(self._items[int(r)]).relative_to(self.path).as_posix() for r in rows]

    def image_parameters(self) -> dict:
        """What the sidecar records of how the images became ``x``."""
        o = self.options
        recorded = {
            "size": list(o.size) if o.size is not None else None,
            "resize": o.resize,
            "channels": o.channels,
            "skip_bad": o.skip_bad,
            "filter": "bilinear",
            "decoder": pillow_versions(),
        }
        if o.skip_bad:
            recorded["skipped"] = list(self.skipped)
        return recorded

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
