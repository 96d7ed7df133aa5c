"""Sharded runs: each of N processes takes every N-th record of the input (``--shard I/N``, or
under ``torchrun`` its rank of the world), writes its own part beside the output (a predictions
file, or a feature store), and the parts are joined into the output (``mmfast merge``, or rank 0
once every rank is done). The joined rows are the single-process run's rows, grouped by shard:
sorted by id, the outputs are equal."""

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from mmfast._io import atomic_path


def parse_shard(value: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; a ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"expected I/N with 0 <= I < N (shard I of N), got {value!r}")
    return int(match[1]), int(match[2])


def torchrun_shard() -> tuple[int, int] | None:
    """``(rank, world size)`` when this process is one of several that torchrun started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def take(items: Iterable, shard: tuple[int, int] | None) -> Iterator:
    """The shard's share of ``items``: every N-th from the I-th."""
    if shard is None:
        yield from items
        return
    index, count = shard
    for position, item in enumerate(items):
        if position % count == index:
            yield item


def part_path(output: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """Where shard I of N writes its part of ``output``: ``<output>.shard-I-of-N``."""
    index, count = shard
    return Path(f"{output}.shard-{index}-of-{count}")


def parts(output: str | os.PathLike) -> list[Path]:
    """The parts of ``output``, in shard order; a ValueError unless they are every shard of one
    run (all I of one N)."""
    output = Path(output)
    pattern = re.compile(re.escape(output.name) + r"\.shard-(\d+)-of-(\d+)")
    found = {}
    for path in Path(output.parent).glob(f"{output.name}.shard-*-of-*"):
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    counts = {count for _, count in found}
    if len(counts) != 1:
        raise ValueError(f"{output}: expected the parts of one sharded run "
                         f"({output.name}.shard-I-of-N), got "
                         f"{sorted(p.name for p in found.values()) or 'none'}")
    count = counts.pop()
    missing = [index for index in range(count) if (index, count) not in found]
    if missing:
        raise ValueError(f"{output}: shards {missing} of {count} have no part yet "
                         f"({output.name}.shard-I-of-{count}): run them first")
    return [found[index, count] for index in range(count)]


def merge(output: str | os.PathLike, remove: bool = True) -> int:
    """Join the parts of ``output`` (``parts``) into it, atomically: a CSV's header once, then
    every part's rows; returns the rows written. The parts are removed once the output is
    complete, unless ``remove`` is false."""
    output = Path(output)
    pieces = parts(output)
    header = output.suffix.lower() == ".csv"
    rows = 0
    with atomic_path(output) as temporary, open(temporary, "wb") as out:
        for number, piece in enumerate(pieces):
            with open(piece, "rb") as part:
                first = part.readline() if header else b""
                if number == 0:
                    out.write(first)
                for line in part:
                    out.write(line)
                    rows += 1
    if remove:
        for piece in pieces:
            piece.unlink()
    return rows


def merge_stores(store: str | os.PathLike, remove: bool = True) -> int:
    """Join the feature stores the shards of ``mmfast features`` wrote (``parts`` of ``store``)
    into ``store``, after the items it holds already (an id in several is kept once, its first
    rows); returns the items written. The shard stores are removed once the store is complete,
    unless ``remove`` is false."""
    import shutil

    import numpy as np

    from mmfast._io import locked
    from mmfast.data import FeatureStore

    pieces = parts(store)
    with locked(store, "another features run"):
        sources = ([FeatureStore(store)] if FeatureStore.exists(store) else []) + [
            FeatureStore(piece) for piece in pieces]
        metas = {json.dumps(source.meta, sort_keys=True) for source in sources}
        if len(metas) != 1:
            raise ValueError(f"{store}: the parts hold features of different extractors "
                             f"({sorted(metas)}): extract them alike")
        ids, rows, seen = [], [], set()
        for source in sources:
            fresh = [item for item in source.ids if item not in seen]
            seen.update(fresh)
            ids.extend(fresh)
            rows.append(source.read("image", fresh))
        FeatureStore.write(store, ids, {"image": np.concatenate(rows)}, meta=sources[0].meta)
    if remove:
        for piece in pieces:
            shutil.rmtree(piece)
    return len(ids)
