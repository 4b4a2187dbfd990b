"""WebDataset shards as input: one ``.tar`` file, a folder of them, or a
brace pattern naming them (``train-{000..099}.tar``, ``io/braces.py``).
``mixup augment`` makes a set of a folder or a pattern (one output per
shard, ``sets/``); read here as one input they are the set's concatenation
(``preview``, the library's ``open_reader``).

A sample is the run of consecutive members sharing a key (the member's path
up to the first dot of its file name: ``d/0001.jpg`` and ``d/0001.cls`` are
sample ``d/0001``), as the ``webdataset`` library groups them; shards are
read in sorted name order, samples in their order in the shard. Its image is
the member with extension jpg, jpeg, png, webp or bmp (the first of these
present), decoded as a folder's images are (``images.decode``); its class is
the integer in its ``.cls`` member, or a field of its ``.json`` member
(``--wds-label json:FIELD``). Without any label member the samples are
``x`` alone (``--no-y``).

Read with ``tarfile`` (uncompressed tar): the members' headers once when
opened, then each image's bytes with ``os.pread`` at its offset, from the
decoding threads. The shards are the input's files (hashed into the sidecar).
Compressed shards (gzip, bzip2, xz, zstd: by name or by their first bytes)
are refused with the command that decompresses them: blocks are read in any
order, which a compressed stream allows only by inflating it from its start.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import braces, images
from mixup_cli.io.images import ImageOptions

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def shard_paths(path: Path) -> list[Path]:
    """The shards: ``path`` itself, the ``.tar`` files in the folder, sorted,
    or those a brace pattern names (``shard-{000..009}.tar``), in its order."""
    path = Path(path)
    if braces.is_pattern(path):
        return braces.expand_pattern(path)
    if not path.is_dir():
        return [path]
    try:
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
    except PermissionError:
        raise InputError(f"{path}: permission denied; make the folder readable") from None
    if not found:
        raise InputError(f"{path}: holds no .tar shards")
    return found


# Compressed tar files start with these bytes (gzip, bzip2, xz, zstd).
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_DECOMPRESS = {"gzip": "gunzip -k", "bzip2": "bunzip2 -k", "xz": "unxz -k", "zstd": "unzstd"}


def compressed_shard(path: Path, kind: str = "gzip") -> InputError:
    """Why a compressed shard is refused, and how to decompress it: its
    members are read by their offsets in the tar (``os.pread``, from several
    threads, blocks in any order), which a compressed stream does not allow
    without inflating it from its start for every block."""
    path = Path(path)
    name = path.name.lower()
    if kind == "gzip" and name.endswith((".tar.gz", ".tgz")):
        plain = path.name[: -len(".gz")] if name.endswith(".tar.gz") else path.name[: -len(".tgz")] + ".tar"
        how = f"gunzip -k {path}, which writes {plain}"
    else:
        plain = path.name[: -len(".tar")] + ".plain.tar" if name.endswith(".tar") else path.name + ".tar"
        how = f"{_DECOMPRESS[kind].split()[0]} -c {path} > {path.with_name(plain)}"
    return InputError(
        f"{path}: a {kind}-compressed tar; WebDataset shards are read uncompressed (by offset), so decompress "
        f"it first ({how}) and pass the .tar"
    )


def refuse_compressed(path: Path) -> None:
    """Refuse a compressed tar (by its first bytes), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return  # the reader says why it cannot read it
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise compressed_shard(path, kind)


def looks_like_shards(path: Path) -> bool:
    """A folder holding ``.tar`` files (and no ``.npy`` of its own)."""
    try:
        names = [e.name for e in os.scandir(path) if e.is_file()]
    except OSError:
        return False
    return any(n.lower().endswith(".tar") for n in names) and not any(n.endswith(".npy") for n in names)


def split_key(name: str) -> tuple[str, str] | None:
    """``dir/0001.seg.png`` -> (``dir/0001``, ``seg.png``); None without an extension."""
    folder, base = posixpath.split(name)
    dot = base.find(".")
    if dot <= 0:
        return None
    return posixpath.join(folder, base[:dot]), base[dot + 1 :].lower()


def parse_label(text: str | None) -> str:
    """``cls`` or ``json:FIELD``."""
    label = text or "cls"
    if label != "cls" and not (label.startswith("json:") and len(label) > 5):
        raise ParameterError(f"--wds-label must be cls or json:FIELD, got {label!r}", "--wds-label")
    return label


def open_reader(path: Path, options: ImageOptions | None = None, fast: bool = True):
    """The shards' samples as images; a tar mixup wrote (``wds_out``), without
    image options, as the arrays it was written from. ``fast=False``
    (verify): members read through ``tarfile`` by name, not by the offsets
    of the run's index, and decoded one at a time."""
    if (options is None or options.is_default()) and Path(path).is_file():
        from mixup_cli.io import wds_out

        if wds_out.is_output(path):
            return wds_out.Reader(path)
    return Reader(path, options or ImageOptions(), fast=fast)


class Reader(images.Reader):
    """Samples of WebDataset shards: ``x`` their images, ``y`` their classes."""

    format_name = "webdataset"
    _what = "WebDataset shards"
    _unlabelled = "its samples have no label member (.cls, or .json with --wds-label json:FIELD)"

    def __init__(self, path: Path, options: ImageOptions, fast: bool = True):
        self._shards = shard_paths(path)
        for shard in self._shards:
            refuse_compressed(shard)
        self._fds: dict[int, int] = {}
        self._tars: dict[int, tarfile.TarFile] = {}  # fast=False: each shard through tarfile
        self._label_spec = parse_label(options.label)
        super().__init__(path, options, fast=fast)

    # ------------------------------------------------------------ items

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                try:
                    self._fds[shard] = os.open(self._shards[shard], os.O_RDONLY)
                except OSError as exc:
                    raise InputError(f"{self._shards[shard]}: cannot read it ({exc.strerror or exc})") from None
            return self._fds[shard]

    def _bytes(self, shard: int, offset: int, size: int, name: str) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise InputError(f"{name}: the shard ended while reading this member (truncated?)")
        return data

    def _samples(self, k: int):
        """(key, {extension: TarInfo}) of shard ``k``, in order."""
        shard = self._shards[k]
        try:
            with tarfile.open(shard, "r:") as tar:
                key, members = None, {}
                for info in tar:
                    if not info.isfile():
                        continue
                    found = split_key(info.name)
                    if found is None:
                        continue
                    if found[0] != key:
                        if key is not None:
                            yield key, members
                        key, members = found[0], {}
                    members.setdefault(found[1], info)
                if key is not None:
                    yield key, members
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InputError(
                f"{shard}: not a readable uncompressed tar file ({exc}); WebDataset shards are .tar files"
            ) from None

    def _label_of(self, k: int, key: str, members: dict) -> int | None:
        name = f"{self._shards[k]}:{key}"
        if self._label_spec == "cls":
            info = members.get("cls")
            if info is None:
                return None
            text = self._bytes(k, info.offset_data, info.size, name).decode("utf-8", "replace").strip()
        else:
            info = members.get("json")
            if info is None:
                return None
            field = self._label_spec[5:]
            try:
                value = json.loads(self._bytes(k, info.offset_data, info.size, name))
                for part in field.split("."):
                    value = value[part]
            except (ValueError, KeyError, TypeError, IndexError):
                raise InputError(
                    f"{name}.json: has no field '{field}'; name the label's field with --wds-label"
                ) from None
            text = str(value)
        try:
            label = int(text)
        except ValueError:
            label = -1
        if label < 0:
            raise InputError(f"{name}: its label {text[:40]!r} is not a class number (an integer >= 0)")
        return label

    def _list(self):
        items, labels, missing = [], [], None
        self.skipped_samples: list[dict] = []
        for k in range(len(self._shards)):
            for key, members in self._samples(k):
                ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
                if ext is None:
                    reason = f"sample '{key}' has no image member ({', '.join(IMAGE_EXTENSIONS)})"
                    if not self.options.skip_bad:
                        raise InputError(f"{self._shards[k]}: {reason}; pass --skip-bad-images to leave it out")
                    self.skipped_samples.append({"path": f"{self._shards[k].resolve()}:{key}", "reason": reason})
                    continue
                info = members[ext]
                label = self._label_of(k, key, members)
                if label is None:
                    missing = missing or f"{self._shards[k]}:{key}"
                items.append((k, info.offset_data, info.size, info.name))
                labels.append(label)
        if not items:
            raise InputError(f"{self.path}: holds no samples with an image")
        if all(label is None for label in labels):
            return items, None, None
        if missing is not None:
            raise InputError(
                f"{missing}: a sample without a label while others have one; every sample needs its "
                f"{'.cls' if self._label_spec == 'cls' else '.json'} member"
            )
        return items, np.asarray(labels, dtype=np.int64), None

    def _source(self, item):
        k, offset, size, member = item
        if self._fast:
            return io.BytesIO(self._bytes(k, offset, size, self._label(item)))
        with self._lock:
            if k not in self._tars:
                self._tars[k] = tarfile.open(self._shards[k], "r:")
            try:
                found = self._tars[k].extractfile(member)
                data = found.read() if found is not None else b""
            except (OSError, tarfile.TarError, KeyError) as exc:
                raise InputError(f"{self._label(item)}: cannot read this member ({exc})") from None
        if len(data) != size:
            raise InputError(f"{self._label(item)}: the shard ended while reading this member (truncated?)")
        return io.BytesIO(data)

    def _name(self, item) -> str:
        return f"{self._shards[item[0]].resolve()}:{item[3]}"

    def _label(self, item) -> str:
        return f"{self._shards[item[0]]}:{item[3]}"

    # ------------------------------------------------------------ Reader

    def files(self) -> list[Path]:
        return list(self._shards)

    def row_names(self, rows) -> list[str]:
        """The samples' keys (``SHARD.tar:KEY`` when the input is a folder of shards)."""
        found = []
        for r in rows:
            k, _, _, member = self._items[int(r)]
            key = split_key(member)[0]
            found.append(key if len(self._shards) == 1 else f"{self._shards[k].name}:{key}")
        return found

    def image_parameters(self) -> dict:
        recorded = super().image_parameters()
        recorded["label"] = self._label_spec
        recorded["samples"] = len(self._items)
        if self.options.skip_bad:
            recorded["skipped"] = self.skipped_samples + list(self.skipped)
        return recorded

    def close(self) -> None:
        super().close()
        with self._lock:
            fds, self._fds = self._fds, {}
            tars, self._tars = self._tars, {}
        for fd in fds.values():
            os.close(fd)
        for tar in tars.values():
            tar.close()

    def __getstate__(self):
        state = super().__getstate__()
        state["_fds"], state["_tars"] = {}, {}
        return state
