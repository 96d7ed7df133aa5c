"""A feature store on disk: one ``.npy`` file per feature (memory-mapped on read) and a JSON
index with the item ids, so features are extracted once and read back without copies."""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mmfast._io import atomic_path, write_text_atomic

_INDEX = "index.json"


class FeatureStore:
    """Read a store: ``store.ids``, ``store["image"]`` (a read-only memmap [N, ...]),
    ``store.rows(ids)``, ``store.meta``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_file = self.directory / _INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"{self.directory} is not a feature store (no {_INDEX})")
        index = json.loads(index_file.read_text())
        self.ids: list[str] = index["ids"]
        self.features: dict[str, dict] = index["features"]
        self.meta: dict = index.get("meta", {})
        self._row = {item: row for row, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, name: str) -> bool:
        return name in self.features

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.features:
            raise KeyError(f"{self.directory} has no feature {name!r}; it has {list(self.features)}")
        return np.load(self.directory / self.features[name]["file"], mmap_mode="r")

    def has(self, item_id: str) -> bool:
        return item_id in self._row

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; a missing id is a KeyError naming it."""
        try:
            return np.fromiter((self._row[item] for item in ids), dtype=np.int64, count=len(ids))
        except KeyError as error:
            raise KeyError(f"id {error.args[0]!r} is not in the feature store {self.directory}")

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        return (Path(directory) / _INDEX).is_file()

    @staticmethod
    def write(
        directory: str | os.PathLike,
        ids: Sequence[str],
        features: Mapping[str, np.ndarray],
        meta: dict | None = None,
    ) -> "FeatureStore":
        """Write ``features`` (each [len(ids), ...]) under ``directory``; the index goes last,
        so a store interrupted mid-write is never opened as complete."""
        directory = Path(directory)
        entries = {}
        for name, array in features.items():
            array = np.ascontiguousarray(array)
            if array.shape[0] != len(ids):
                raise ValueError(
                    f"FeatureStore.write: feature {name!r} must have {len(ids)} rows (one per id), "
                    f"got shape {array.shape}"
                )
            file = f"{name}.npy"
            with atomic_path(directory / file) as temporary, open(temporary, "wb") as handle:
                np.save(handle, array)
            entries[name] = {"file": file, "dtype": str(array.dtype), "shape": list(array.shape)}
        index = {"ids": list(ids), "features": entries, "meta": meta or {}}
        write_text_atomic(directory / _INDEX, json.dumps(index) + "\n")
        return FeatureStore(directory)
