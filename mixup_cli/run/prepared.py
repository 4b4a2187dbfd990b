"""Arrays as they are mixed: x in its output dtype, y encoded, both checked.

``PreparedReader`` wraps an input's reader and, block by block as rows are
read, converts x to ``--x-dtype``, encodes y (``targets/encoding.py``) and refuses
NaN or Inf (unless ``--allow-nonfinite``), naming the array and first row.
Everything downstream (block cache, mixing, writers, any engine that reads
through it) sees only prepared rows and never loads an array whole.

With ``--y-format pair`` the targets are not mixed: each output row gets
``KEY_a`` (its own row's target) and ``KEY_b`` (its partner's), dtype kept,
beside ``lam``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io.base import ArraySpec, Reader
from mixup_cli.io.images import ImageOptions, parse_size
from mixup_cli.io.npyfile import check_output_key
from mixup_cli.targets import encoding

X_DTYPES = ("keep", "float16", "float32", "float64")
Y_FORMATS = ("soft", "pair")


@dataclass(frozen=True)
class DataOptions:
    """The options that decide how x and y are read and mixed."""

    x_dtype: str = "keep"  # keep | float16 | float32 | float64
    y_format: str = "soft"  # soft | pair
    y_kind: str = "auto"  # auto | classes | binary | multilabel | dense
    num_classes: int | None = None
    label_smoothing: float = 0.0
    allow_nonfinite: bool = False
    # A folder of images (io/images.py): None and False when not given.
    image_size: tuple[int, int] | None = None  # (width, height)
    image_resize: str | None = None  # crop | squash [default: crop]
    image_channels: str | None = None  # rgb | gray [default: rgb]
    skip_bad_images: bool = False
    wds_label: str | None = None  # WebDataset shards: cls | json:FIELD [default: cls]
    # --sample-axis: the axis of x holding the samples (a number, or a netCDF-4 dimension name); io/axes.py.
    sample_axis: int | str | None = None

    def __post_init__(self):
        object.__setattr__(self, "sample_axis", parse_sample_axis(self.sample_axis))

    def image_options(self) -> ImageOptions | None:
        """How a folder of images is decoded; None when no image option is given."""
        given = (self.image_size, self.image_resize, self.image_channels, self.skip_bad_images, self.wds_label)
        if given == (None, None, None, False, None):
            return None
        if self.image_resize is not None and self.image_size is None:
            raise ParameterError("--image-resize applies with --image-size (the size to resize to)", "--image-resize")
        return ImageOptions(
            size=parse_size(self.image_size),
            resize=self.image_resize or "crop",
            channels=self.image_channels or "rgb",
            skip_bad=self.skip_bad_images,
            label=self.wds_label,
        ).check()

    def check(self) -> DataOptions:
        if self.x_dtype not in X_DTYPES:
            raise ParameterError(f"--x-dtype must be one of {', '.join(X_DTYPES)}, got {self.x_dtype!r}", "--x-dtype")
        if self.y_format not in Y_FORMATS:
            raise ParameterError(
                f"--y-format must be one of {', '.join(Y_FORMATS)}, got {self.y_format!r}", "--y-format"
            )
        if self.y_kind not in encoding.Y_KINDS:
            raise ParameterError(
                f"--y-kind must be one of {', '.join(encoding.Y_KINDS)}, got {self.y_kind!r}", "--y-kind"
            )
        encoding.check_smoothing(self.label_smoothing)
        if self.y_format == "pair":
            for value, option in (
                (self.num_classes, "--num-classes"),
                (self.label_smoothing or None, "--label-smoothing"),
            ):
                if value is not None:
                    raise ParameterError(
                        f"{option} applies to --y-format soft; pair writes the targets as they are", option
                    )
        return self

    @classmethod
    def from_parameters(cls, parameters: dict) -> DataOptions:
        """The options a sidecar's ``parameters`` record (defaults where absent)."""
        targets = parameters.get("targets") or {}
        pair = parameters.get("y_format", "soft") == "pair"
        return cls(
            x_dtype=parameters.get("x_dtype", "keep"),
            y_format=parameters.get("y_format", "soft"),
            y_kind=targets.get("kind", "auto"),
            num_classes=None if pair else targets.get("num_classes"),
            label_smoothing=0.0 if pair else targets.get("label_smoothing", 0.0),
            allow_nonfinite=parameters.get("allow_nonfinite", False),
            sample_axis=parameters.get("sample_axis"),
            **_image_fields(parameters.get("images")),
        )


def parse_sample_axis(value) -> int | str | None:
    """``--sample-axis``: an axis number (as int) or a dimension name."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    if not text:
        raise ParameterError("--sample-axis needs an axis number or a netCDF dimension name", "--sample-axis")
    return text


def _image_fields(images: dict | None) -> dict:
    """DataOptions' image fields from what a sidecar records of the images."""
    if not images:
        return {}
    size = images.get("size")
    return {
        "image_size": tuple(size) if size else None,
        "image_resize": images.get("resize") if size else None,
        "image_channels": images.get("channels"),
        "skip_bad_images": bool(images.get("skip_bad")),
        "wds_label": images.get("label"),
    }


def pair_keys(key: str) -> tuple[str, str]:
    """Output names of a target written as a pair: own row's, partner's."""
    return f"{key}_a", f"{key}_b"


Transform = Callable[[np.ndarray, object], np.ndarray]


class PreparedReader(Reader):
    """The input as it is mixed: reads go to ``inner``, then through a
    per-key transform ``f(block, rows)`` (``rows``: first row read, or the
    rows read by index)."""

    def __init__(self, inner: Reader, specs: dict[str, ArraySpec], transforms: dict[str, Transform]):
        super().__init__(inner.path)
        self.inner = inner
        self.format_name = inner.format_name
        self._specs = specs
        self._transforms = transforms

    def keys(self) -> list[str]:
        return self.inner.keys()

    def spec(self, key: str) -> ArraySpec:
        return self._specs[key] if key in self._specs else self.inner.spec(key)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        block = self.inner.read(key, start, stop)
        f = self._transforms.get(key)
        return block if f is None else f(block, start)

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        # Straight into the caller's buffer when the transform keeps shape and
        # dtype (a check, or nothing): no extra copy of the block.
        f = self._transforms.get(key)
        if f is None or self.spec(key) == self.inner.spec(key):
            self.inner.read_into(key, start, stop, out)
            block = out[: stop - start]
            if f is not None:
                result = f(block, start)
                if result is not block:
                    np.copyto(block, result)
        else:
            np.copyto(out[: stop - start], f(self.inner.read(key, start, stop), start))

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        return self.prepare_rows(key, self.inner.take(key, rows), rows)

    def prepare_rows(self, key: str, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``block``, the inner reader's rows ``rows`` of ``key`` (read by
        index, however), as this reader gives them."""
        f = self._transforms.get(key)
        return block if f is None else f(block, np.asarray(rows))

    def describe(self, key: str) -> dict:
        return self.inner.describe(key)

    def take_inflates(self, key: str) -> bool:
        return self.inner.take_inflates(key)

    def take_scatters(self) -> bool:
        return self.inner.take_scatters()

    def files(self):
        return self.inner.files()

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Prepared:
    reader: PreparedReader
    specs: dict[str, ArraySpec]  # data keys as mixed: x then y
    paired: tuple[str, ...]  # data keys written as KEY_a / KEY_b instead of mixed
    targets: encoding.Targets | None  # None without y, or with --y-format pair
    target_kind: str | None  # the kind of y (recorded for pair too)
    options: DataOptions
    # String or categorical labels (``named.NamedLabels``): the name of each class code.
    class_names: list[str] | None = None
    # A folder of images: how they were decoded (``io.images.Reader.image_parameters``).
    images: dict | None = None

    def resolved_options(self) -> DataOptions:
        """The options that prepare the same rows again without a pass over y
        (the kind and classes found here): what other processes open the input with."""
        t = self.targets
        return DataOptions(
            x_dtype=self.options.x_dtype,
            y_format=self.options.y_format,
            y_kind=(t.kind if t is not None else self.target_kind) or "auto",
            num_classes=t.num_classes if t is not None else None,
            label_smoothing=t.label_smoothing if t is not None else 0.0,
            allow_nonfinite=self.options.allow_nonfinite,
            image_size=self.options.image_size,
            image_resize=self.options.image_resize,
            image_channels=self.options.image_channels,
            skip_bad_images=self.options.skip_bad_images,
            wds_label=self.options.wds_label,
            sample_axis=self.options.sample_axis,
        )

    def parameters(self) -> dict:
        """What the sidecar's ``parameters`` records (``DataOptions.from_parameters`` reads it back)."""
        if self.targets is not None:
            targets = self.targets.to_dict()
        elif self.target_kind is not None:
            targets = {
                "kind": self.target_kind,
                "dtype": None,
                "num_classes": None,
                "classes": None,
                "label_smoothing": 0.0,
            }
        else:
            targets = None
        recorded = {
            "x_dtype": self.options.x_dtype,
            "y_format": self.options.y_format,
            "allow_nonfinite": self.options.allow_nonfinite,
            "targets": targets,
        }
        if self.class_names is not None:  # only for such labels: other sidecars stay as they were
            recorded["class_names"] = list(self.class_names)
        if self.options.sample_axis is not None:  # only when given: other sidecars stay as they were
            recorded["sample_axis"] = self.options.sample_axis
        if self.images is not None:  # a folder of images only
            recorded["images"] = dict(self.images)
        return recorded


def first_nonfinite_row(block: np.ndarray) -> int | None:
    """Offset of the first row holding NaN or Inf, or None (floats only)."""
    if block.dtype.kind != "f" or len(block) == 0:
        return None
    # A NaN or an Inf anywhere makes the sum NaN or Inf, so a finite sum
    # proves every element finite, in one pass and no temporary array (a sum
    # that overflows falls through to the exact check below).
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(block.reshape(-1), dtype=np.float32 if block.dtype.itemsize < 4 else None)
    if np.isfinite(total):
        return None
    finite = np.isfinite(block)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(block), -1).all(axis=1))[0])


def check_finite(block: np.ndarray, rows, label: str, note: str = "") -> None:
    i = first_nonfinite_row(block)
    if i is not None:
        raise InputError(
            f"{label} row {encoding.row_number(rows, i)} holds NaN or Inf{note}; "
            "clean the data or pass --allow-nonfinite to mix such values as they are"
        )


def _refuse_long_float(path, key: str, dtype: np.dtype, hint: str) -> None:
    """float16/32/64 are the floats every output format stores and reads back;
    long double (float96/float128) is not portable (HDF5 output of it cannot be
    read again through numpy's buffer protocol, other formats differ by platform)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize not in (2, 4, 8):
        raise InputError(
            f"{path}: array '{key}' has dtype {dtype.name} (long double), which is not supported "
            f"(float16/32/64 and integer types are); {hint}"
        )


def _refuse_target_options(options: DataOptions, path) -> None:
    for value, option in (
        (options.num_classes, "--num-classes"),
        (options.label_smoothing or None, "--label-smoothing"),
        (None if options.y_kind == "auto" else options.y_kind, "--y-kind"),
        (None if options.y_format == "soft" else options.y_format, "--y-format"),
    ):
        if value is not None:
            raise ParameterError(f"{option} applies to targets, but {path} is mixed without y", option)


def _prepare_y(reader: Reader, y_key: str, y_spec: ArraySpec, x_spec: ArraySpec, options: DataOptions):
    """y as mixed: its spec, the transform of each block read, its ``Targets``
    (None for pairs) and kind."""
    check = not options.allow_nonfinite
    y_label = f"{reader.path}: '{y_key}'"
    if options.y_format == "pair":
        kind = encoding.auto_kind(y_spec.dtype, y_spec.row_shape) if options.y_kind == "auto" else options.y_kind

        def prepare_pair(block, rows):
            if check:
                check_finite(block, rows, y_label)
            return block

        return y_spec, prepare_pair, None, kind
    targets = encoding.resolve(
        reader,
        y_key,
        y_spec.dtype,
        y_spec.shape,
        options.y_kind,
        options.num_classes,
        options.label_smoothing,
        input_row_bytes=x_spec.row_bytes + y_spec.row_bytes,
    )

    def prepare_y(block, rows):
        if check:
            check_finite(block, rows, y_label)
        return targets.encode(block, rows)

    spec = ArraySpec((y_spec.rows,) + targets.encoded_row_shape(y_spec.row_shape), targets.dtype)
    return spec, prepare_y, targets, targets.kind


def prepare(
    reader: Reader,
    x_key: str,
    x_spec: ArraySpec,
    y_key: str | None,
    y_spec: ArraySpec | None,
    options: DataOptions,
) -> Prepared:
    """Resolve what x and y become (finding the classes if needed) and wrap ``reader``."""
    options.check()
    # Output arrays take the input's names; refuse at the start any name that
    # could point outside OUT (npyfile.check_output_key).
    check_output_key(x_key, "--x-key")
    if y_key is not None:
        check_output_key(y_key, "--y-key")
    if options.x_dtype == "keep":
        _refuse_long_float(reader.path, x_key, x_spec.dtype, "pass --x-dtype float64 to convert it as it is read")
    if y_spec is not None:
        _refuse_long_float(reader.path, y_key, y_spec.dtype, "save the targets as float64")
    check = not options.allow_nonfinite
    x_label = f"{reader.path}: '{x_key}'"
    x_dtype = x_spec.dtype if options.x_dtype == "keep" else np.dtype(options.x_dtype)
    converted = np.dtype(x_dtype) != np.dtype(x_spec.dtype)
    note = f" after conversion to {np.dtype(x_dtype)}" if converted else ""

    def prepare_x(block, rows):
        if converted:
            with np.errstate(over="ignore"):  # values beyond the new dtype become Inf: reported below
                block = block.astype(x_dtype)
        if check:
            check_finite(block, rows, x_label, note)
        return block

    specs = {x_key: ArraySpec(x_spec.shape, np.dtype(x_dtype))}
    transforms: dict[str, Transform] = {x_key: prepare_x}
    targets, kind, paired = None, None, ()
    if y_key is None:
        _refuse_target_options(options, reader.path)
    else:
        specs[y_key], transforms[y_key], targets, kind = _prepare_y(reader, y_key, y_spec, x_spec, options)
        paired = (y_key,) if options.y_format == "pair" else ()
    wrapped = PreparedReader(reader, specs, transforms)
    image_parameters = getattr(reader, "image_parameters", None)
    return Prepared(
        wrapped,
        specs,
        paired,
        targets,
        kind,
        options,
        getattr(reader, "class_names", None),
        image_parameters() if image_parameters is not None else None,
    )
