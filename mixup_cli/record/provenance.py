"""The provenance sidecar ``OUT.provenance.json``: what made an output.

It records every parameter that decides the output (seed included), the
input files' SHA-256, the output arrays' SHA-256 (``mixup_cli.record.digests``),
shapes and dtypes, and the software versions, so a run can be repeated and
checked (``mixup verify``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import platform
import stat
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mixup_cli._version import __version__
from mixup_cli.core import beside, blend, stopping
from mixup_cli.core.errors import InputError

# 2: each output array's SHA-256 (mixup_cli.record.digests); output files' SHA-256 only on request.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
SIDECAR_SUFFIX = ".provenance.json"
_HASH_BLOCK = 1024 * 1024  # per read; larger buys no speed, only memory
_MAPPED_WINDOW = 2 * 1024 * 1024  # of a file mapped at once (a multiple of mmap's granularity)


def sidecar_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        if info.st_size and stat.S_ISREG(info.st_mode):
            # Hashing the page cache in place saves copying the file (about a
            # tenth of the time); one window mapped at a time keeps RSS bounded.
            for at in range(0, info.st_size, _MAPPED_WINDOW):
                stopping.check()  # in the caller's thread (verify); a background hash has no token
                size = min(_MAPPED_WINDOW, info.st_size - at)
                with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ, offset=at) as window:
                    with memoryview(window) as view:
                        digest.update(view)
            return digest.hexdigest()
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            stopping.check()
            digest.update(view[:n])
    return digest.hexdigest()


class BackgroundHash:
    """Hashes files in a thread while the run goes on (hashlib releases the GIL)."""

    def __init__(self, paths: list[Path]):
        self._paths = list(paths)
        self._result: dict[str, str] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for p in self._paths:
                self._result[str(p)] = sha256_file(p)
        except BaseException as exc:  # re-raised in result()
            self._error = exc

    def result(self) -> dict[str, str]:
        """The hashes, once done; a stop asked for meanwhile is raised (the thread ends alone)."""
        while self._thread.is_alive():
            stopping.check()
            self._thread.join(stopping.POLL_S)
        if self._error is not None:
            raise self._error
        return self._result


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def software_versions() -> dict:
    import h5py  # only when a sidecar is written

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "mixup_cli": __version__,
        "kernel": blend.KERNEL,  # the compiled mixing loop or numpy's (same bytes)
        **_optional_versions(),
    }


def _optional_versions() -> dict:
    """Versions of the optional libraries this run used (those imported): what
    read or wrote the data, and for images the codecs whose bytes they decide."""
    found = {}
    for name, module in (("pyarrow", "pyarrow"), ("zarr", "zarr"), ("dask", "dask"), ("pillow", "PIL")):
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__version__", None):
            found[name] = loaded.__version__
    if "pillow" in found:
        from PIL import features

        for codec, key in (("jpg", "libjpeg"), ("zlib", "zlib")):  # JPEG and PNG bytes depend on them
            version = features.version(codec)
            if version:
                found[key] = version
    return found


def build(
    *,
    run_id: str,
    command_line: list[str],
    parameters: dict,
    execution: dict,
    input_entry: dict,
    output_entry: dict,
    started_at: str,
    finished_at: str,
    set_section: dict | None = None,
) -> dict:
    record = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mixup-cli", "version": __version__},
        "run_id": run_id,
        "command_line": command_line,
        "parameters": parameters,
        "execution": execution,
        "input": input_entry,
        "output": output_entry,
        "started_at": started_at,
        "finished_at": finished_at,
        "software": software_versions(),
    }
    if set_section is not None:  # one output of a sharded set (mixup_cli.sets.identity.section)
        record["set"] = set_section
    return record


def to_json(record: dict) -> str:
    """The sidecar's text: sorted keys, indented for people."""
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


# A sidecar larger than this was not written by mixup (a set's inline input list stops at 256 inputs).
SIDECAR_LIMIT = 256 * 1024 * 1024


def read(path: Path) -> dict:
    try:
        # Read through a link (only read, never written through), but never a FIFO or device.
        record = json.loads(beside.read_regular(path, SIDECAR_LIMIT, follow=True).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no provenance sidecar; was this file written by mixup augment?") from None
    except beside.NotPlain as exc:
        raise InputError(f"{path}: {exc.strerror}, not a provenance sidecar; move it away") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not a valid provenance sidecar ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the sidecar ({exc.strerror or exc})") from None
    if not isinstance(record, dict) or record.get("schema_version") not in READABLE_SCHEMAS:
        raise InputError(
            f"{path}: unsupported sidecar schema (this mixup-cli reads versions "
            f"{', '.join(map(str, READABLE_SCHEMAS))}); check it with the mixup-cli version that wrote it"
        )
    return record


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name] + sys.argv[1:]
