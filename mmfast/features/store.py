"""Feature stores of a manifest's images: extract what a store lacks (resumably, in chunks,
locked against a second writer), read rows back in a manifest's order, and the demo's store."""

import os
import warnings
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from mmfast._io import locked
from mmfast.data import DemoData, FeatureStore, Record, demo_cache_dir, emoji_dataset, read_manifest
from mmfast.defaults import DEMO_IMAGE_SIZE
from mmfast.features.image import BadImageError, ImageFeatureExtractor
from mmfast.sharding import take


def image_store(records: Sequence[Record], directory: str | os.PathLike,
                extractor: ImageFeatureExtractor | None = None, progress: bool = True,
                skip_bad: bool = False, skipped: list[Record] | None = None,
                shard: tuple[int, int] | None = None) -> FeatureStore:
    """The feature store at ``directory`` holding ``records``' image features, extracted now
    only for the ids it lacks. Rows are committed every ``EXTRACT_CHUNK`` images
    (``FeatureStore.commit_chunk``) and merged into the store at the end, so a killed run loses
    at most one chunk: the next run on the same store takes up what it left. A repeated id, or
    an image several ids share, is extracted once (a warning counts repeated ids); two records
    of one id with different images are a ValueError. An unreadable image is a
    ``BadImageError`` naming the record's id, or with ``skip_bad`` is left out of the store
    (its records appended to ``skipped`` when a list is given). The store is locked
    (``mmfast._io.locked``) from read to write: a second writer gets "in use by pid N" instead
    of replacing the first one's rows with its own. ``shard`` (index, count): only this share of
    the distinct ids (``mmfast.sharding.take``), so no two shards extract one item."""
    # a pairs file's records read another item's features (``image_id``): nothing to extract
    unique = list(take(_unique_by_id([r for r in records if not r.image_id], directory), shard))
    with locked(directory, "another features run"):
        old = FeatureStore(directory) if FeatureStore.exists(directory) else None
        have = set() if old is None else set(old.ids)
        missing = [r for r in unique if r.id not in have]
        if not missing:
            return old
        extractor = extractor or ImageFeatureExtractor(image_size=DEMO_IMAGE_SIZE)
        meta = {"extractor": extractor.config()}
        if old is not None and old.meta.get("extractor") != meta["extractor"]:
            raise ValueError(f"{directory} holds features of {old.meta.get('extractor')}, "
                             f"not {extractor.config()}: use another store directory")
        done = set(FeatureStore.pending_ids(directory, meta))  # an interrupted run's rows
        missing = [r for r in missing if r.id not in done]
        committed = len(done)
        # An image several records share (a relevance manifest pairs each image with three
        # captions) is read and run through the network once, its row stored under each id.
        sharing: dict[str, list[Record]] = {}
        for record in missing:
            sharing.setdefault(record.image, []).append(record)
        images = list(sharing)
        with tqdm(total=len(images), desc="image features", unit="img",
                  disable=not progress, leave=False) as bar:
            for start in range(0, len(images), EXTRACT_CHUNK):
                chunk = images[start:start + EXTRACT_CHUNK]
                try:
                    rows, bad = extractor.extract(chunk, False, skip_bad)
                except BadImageError as error:
                    record = sharing[chunk[error.index]][0]
                    raise BadImageError(missing.index(record), f"id {record.id!r}: {error}",
                                        record.id) from None
                unreadable = set(bad)
                if skipped is not None:
                    skipped.extend(r for index in bad for r in sharing[chunk[index]])
                kept = [sharing[image] for index, image in enumerate(chunk)
                        if index not in unreadable]
                if kept:
                    FeatureStore.commit_chunk(directory, [r.id for group in kept for r in group],
                                              np.repeat(rows, [len(g) for g in kept], axis=0),
                                              meta)
                    committed += len(kept)
                bar.update(len(chunk))
        if old is None and not committed:
            raise ValueError(f"{directory}: none of the {len(images)} images could be read")
        return FeatureStore.merge_pending(directory, meta)


# Images extracted between commits: ~5-10 s of work at the demo's size on 2 cores, so a killed
# run loses little, while the chunk files stay few.
EXTRACT_CHUNK = 1024


def _unique_by_id(records: Sequence[Record], directory) -> list[Record]:
    first: dict[str, Record] = {}
    for record in records:
        seen = first.setdefault(record.id, record)
        if seen.image != record.image:
            raise ValueError(f"{directory}: id {record.id!r} names two images, {seen.image} and "
                             f"{record.image}: expected one image per id")
    if len(first) < len(records):
        warnings.warn(f"{len(records) - len(first)} repeated ids (same id and image) are "
                      "extracted once", stacklevel=3)
    return list(first.values())


def demo_image_store(records: Sequence[Record], progress: bool = True) -> FeatureStore:
    """``image_store`` of demo records (``mmfast.data.emoji_dataset``) in the demo's cache
    folder, with the default extractor: pooled EfficientNet-Lite0 at ``DEMO_IMAGE_SIZE`` px."""
    return image_store(records, demo_cache_dir() / f"features-lite0-{DEMO_IMAGE_SIZE}",
                       progress=progress)


def store_features(store: FeatureStore, records: Sequence[Record]) -> np.ndarray:
    """The store's ``image`` rows of ``records``, in their order (a record with an
    ``image_id``: that item's row; ``Record.store_id``, spelled out: a property call per item
    was a tenth of classify's reading)."""
    return store.read("image", [record.image_id or record.id for record in records])


def demo_features(task: str) -> tuple[DemoData, list[Record], list[Record], np.ndarray,
                                      np.ndarray]:
    """The demo's ``task`` (``mmfast.data.emoji_dataset``): the dataset, its train and held-out
    records, and their image features from ``demo_image_store``."""
    data = emoji_dataset(task)
    train, heldout = read_manifest(data.train), read_manifest(data.heldout)
    store = demo_image_store(train + heldout)
    return data, train, heldout, store_features(store, train), store_features(store, heldout)
