"""Hugging Face ``datasets`` folders (``Dataset.save_to_disk``): Arrow IPC
files (``data-00000-of-00001.arrow``...) listed by ``state.json``, with the
features in ``dataset_info.json``. Found by their content (a folder holding
``dataset_info.json`` and ``.arrow`` files), read through pyarrow (the
optional extra ``arrow``), ``datasets`` itself never imported.

The files are memory-mapped and read a record batch at a time, zero-copy
(as ``datasets`` reads them): memory holds the block, not the dataset.
Columns become arrays as in Parquet files (``io.parquet``): ``Array2D``/
``Array3D`` and ``Sequence`` features are tensors of the shape their rows
have, ``ClassLabel`` columns are classes named by the feature's names, in
its order (label k is the k-th name).
"""

from __future__ import annotations

import json
from pathlib import Path

from mixup_cli.core.errors import InputError
from mixup_cli.io.parquet import TableReader, class_label_names, import_pyarrow

INFO = "dataset_info.json"
STATE = "state.json"
DICT = "dataset_dict.json"


def is_datasets_folder(path: Path) -> bool:
    """Whether ``path`` is a folder ``datasets.save_to_disk`` wrote (one split, or a DatasetDict)."""
    path = Path(path)
    try:
        if (path / DICT).is_file():
            return True
        return (path / INFO).is_file() and any(p.suffix == ".arrow" for p in path.iterdir())
    except OSError:
        return False


def open_reader(path: Path) -> Reader:
    return Reader(path)


def _read_json(path: Path, what: str) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc}); the datasets folder is damaged") from None
    if not isinstance(found, dict):
        raise InputError(f"{path}: the {what} is not a JSON object; the datasets folder is damaged")
    return found


class Reader(TableReader):
    format_name = "arrow"

    def __init__(self, path: Path):
        super().__init__(path)
        self._pa = pa = import_pyarrow(self.path)
        if (self.path / DICT).is_file():
            splits = _read_json(self.path / DICT, "split list").get("splits") or []
            example = f"{self.path / splits[0]}" if splits else f"{self.path}/train"
            raise InputError(
                f"{self.path}: a DatasetDict folder (splits: {', '.join(map(str, splits)) or 'none'}); "
                f"pass one split's folder, e.g. {example}"
            )
        features = _read_json(self.path / INFO, "dataset info").get("features") or {}
        self._data_files = self._listed_files()
        self._maps, self._batches = [], []
        schema = None
        for file in self._data_files:
            try:
                source = pa.memory_map(str(file))
                self._maps.append(source)
                reader = pa.ipc.open_stream(source)
                batches = list(reader)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(
                    f"{file}: not a readable Arrow stream ({exc}); the datasets folder is damaged"
                ) from None
            if schema is None:
                schema = reader.schema
            elif reader.schema.names != schema.names:
                raise InputError(
                    f"{file}: its columns ({', '.join(reader.schema.names)}) differ from those of "
                    f"{self._data_files[0].name} ({', '.join(schema.names)}); the datasets folder is damaged"
                )
            self._batches += [b for b in batches if b.num_rows]
        self._setup(schema, [b.num_rows for b in self._batches])
        self._class_names = class_label_names(features)

    def _listed_files(self) -> list[Path]:
        """The Arrow files in ``state.json``'s order, else every ``.arrow`` file by name."""
        if (self.path / STATE).is_file():
            listed = _read_json(self.path / STATE, "state").get("_data_files") or []
            names = [f.get("filename") for f in listed if isinstance(f, dict)]
            if names and all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in names):
                missing = [n for n in names if not (self.path / n).is_file()]
                if missing:
                    raise InputError(f"{self.path}: state.json lists {missing[0]}, which is missing; copy it back")
                return [self.path / n for n in names]
        found = sorted(p for p in self.path.iterdir() if p.suffix == ".arrow" and p.is_file())
        if not found:
            raise InputError(f"{self.path}: a datasets folder without .arrow files")
        return found

    def _read_piece(self, i: int, columns: list[str]):
        return self._pa.Table.from_batches([self._batches[i]]).select(columns)

    def describe(self, key: str) -> dict:
        return {"record_batches": len(self._batches), "files": len(self._data_files), **super().describe(key)}

    def files(self) -> list[Path]:
        return [self.path / INFO] + list(self._data_files)

    def close(self) -> None:
        super().close()
        self._batches = []
        for source in self._maps:
            source.close()
        self._maps = []
