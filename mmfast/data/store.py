"""A feature store on disk: one ``.npy`` file per feature (memory-mapped on read) and a JSON
index with the item ids, so features are extracted once and read back without copies.

A long extraction commits its rows as it goes, in chunk files under ``pending/`` (each written
atomically, ``.npz`` without pickles); a run killed midway leaves them for the next run, which
extracts only what they lack and merges them into the store.
"""

import json
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from mmfast._io import atomic_path, write_text_atomic

_INDEX = "index.json"
_PENDING = "pending"


class FeatureStore:
    """Read a store: ``store.ids``, ``store["image"]`` (a read-only memmap [N, ...]),
    ``store.rows(ids)``, ``store.read(name, ids)``, ``store.meta``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_file = self.directory / _INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"{self.directory} is not a feature store (no {_INDEX})")
        index = json.loads(index_file.read_text())
        self.ids: list[str] = index["ids"]
        self.features: dict[str, dict] = index["features"]
        self.meta: dict = index.get("meta", {})
        self._next_row = 0  # where the last ``read`` ended: the next batch's likely start

    @cached_property
    def _row(self) -> dict[str, int]:
        # built on the first look-up by id: a manifest read in the store's order never needs it,
        # and for 250k ids it is 30 ms, a twentieth of classifying them
        return dict(zip(self.ids, range(len(self.ids))))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, name: str) -> bool:
        return name in self.features

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.features:
            raise KeyError(f"{self.directory} has no feature {name!r}; it has "
                           f"{list(self.features)}")
        path = self.directory / self.features[name]["file"]
        try:
            return np.load(path, mmap_mode="r")
        except (EOFError, ValueError) as error:  # an empty, cut or foreign file
            raise ValueError(f"{path}: expected a .npy array, got a file numpy cannot read "
                             f"({type(error).__name__}: {error})") from None

    def has(self, item_id: str) -> bool:
        return item_id in self._row

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; a missing id is a KeyError naming it."""
        try:
            return np.fromiter(map(self._row.__getitem__, ids), dtype=np.int64, count=len(ids))
        except KeyError as error:
            raise KeyError(f"id {error.args[0]!r} is not in the feature store {self.directory}")

    def read(self, name: str, ids: Sequence[str]) -> np.ndarray:
        """Feature ``name``'s rows of ``ids``, in their order, as a new array. Ids that go on
        from where the last read ended, in the store's order (a manifest read in the order its
        store was written, classify's usual case), are one slice, found by comparing strings:
        a tenth of the time of hashing each id to look it up."""
        ids = list(ids)
        start = self._next_row
        if self.ids[start:start + len(ids)] == ids:
            self._next_row = start + len(ids)
            return np.array(self[name][start:self._next_row])
        rows = self.rows(ids)
        self._next_row = int(rows[-1]) + 1 if len(rows) else start
        return self[name][rows]

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

    @staticmethod
    def commit_chunk(directory: str | os.PathLike, ids: Sequence[str], rows: np.ndarray,
                     meta: dict) -> None:
        """Keep ``rows`` [len(ids), ...] of ``ids`` under ``directory/pending`` until
        ``merge_pending``, in a chunk file of its own, written atomically."""
        pending = Path(directory) / _PENDING
        number = len(list(pending.glob("chunk-*.npz"))) if pending.is_dir() else 0
        with atomic_path(pending / f"chunk-{number:06d}.npz") as temporary, \
                open(temporary, "wb") as handle:
            np.savez(handle, ids=np.array(list(ids), dtype=str), rows=np.ascontiguousarray(rows),
                     meta=np.array(json.dumps(meta, sort_keys=True)))

    @staticmethod
    def pending(directory: str | os.PathLike, meta: dict, with_rows: bool = True
                ) -> tuple[list[str], np.ndarray | None]:
        """The ids and (``with_rows``) rows committed by ``commit_chunk`` and not yet merged, in
        commit order; chunks made with other ``meta`` (another extractor) are a ValueError."""
        pending = Path(directory) / _PENDING
        ids, rows = [], []
        for chunk in sorted(pending.glob("chunk-*.npz")) if pending.is_dir() else ():
            with np.load(chunk, allow_pickle=False) as data:  # members are read on access
                if json.loads(str(data["meta"])) != meta:
                    raise ValueError(f"{chunk}: rows of an interrupted run with "
                                     f"{str(data['meta'])}, not {json.dumps(meta, sort_keys=True)}:"
                                     f" use another store directory or delete {pending}")
                ids.extend(data["ids"].tolist())
                if with_rows:
                    rows.append(data["rows"])
        return ids, (np.concatenate(rows) if rows else None)

    @staticmethod
    def pending_ids(directory: str | os.PathLike, meta: dict) -> list[str]:
        """``pending``'s ids alone: the rows stay on disk."""
        return FeatureStore.pending(directory, meta, with_rows=False)[0]

    @staticmethod
    def merge_pending(directory: str | os.PathLike, meta: dict) -> "FeatureStore":
        """The store with its pending rows appended (``image`` feature) and the chunks
        removed: written first, so a kill during the merge loses nothing."""
        directory = Path(directory)
        ids, rows = FeatureStore.pending(directory, meta)
        if FeatureStore.exists(directory):
            old = FeatureStore(directory)
            if rows is not None:
                ids = list(old.ids) + ids
                rows = np.concatenate([np.asarray(old["image"]), rows])
        if rows is None:
            return FeatureStore(directory)
        store = FeatureStore.write(directory, ids, {"image": rows}, meta=meta)
        for chunk in (directory / _PENDING).glob("chunk-*.npz"):
            chunk.unlink()
        return store
