"""A 3-class image-text relevance task on the demo data, in the spirit of paper 004's classes
(explicit relevant, implicit relevant, irrelevant).

Each image is paired three times: with its own caption (``matching``), with the caption of
another item of the same group (``same_group``: related in topic, not a description of the
image) and with the caption of an item of another group (``other_group``). The partners are drawn
from the same split as the image, so a held-out image never meets a train caption (nor a train
image a held-out caption), and the draws depend only on the records' order and the seed.
"""

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from mmfast.data.manifest import Record

RELEVANCE_LABELS = ("matching", "same_group", "other_group")


class Pair(NamedTuple):
    image: Record
    """The item whose image is shown."""
    caption: Record
    """The item whose text is shown."""
    label: int
    """Index into ``RELEVANCE_LABELS``."""


def relevance_pairs(records: Sequence[Record], seed: int = 0) -> list[Pair]:
    """Three pairs per image of ``records`` (one split, single-label ``group`` records), in
    record order. An image whose group has no other item in ``records`` gets no ``same_group``
    pair, so that class never borrows a caption from outside its definition."""
    if not records:
        return []
    unlabeled = [record.id for record in records if len(record.labels) != 1]
    if unlabeled:
        raise ValueError(f"relevance_pairs: every record needs exactly one group label; "
                         f"{len(unlabeled)} do not (first {unlabeled[0]!r})")
    by_group = defaultdict(list)
    for record in records:
        by_group[record.labels[0]].append(record)
    if len(by_group) < 2:
        raise ValueError(f"relevance_pairs: need records of at least 2 groups, got "
                         f"{sorted(by_group)}")
    outside = {group: [other for other in records if other.labels[0] != group]
               for group in by_group}
    rng = random.Random(seed)
    pairs = []
    for record in records:
        group = record.labels[0]
        same = [other for other in by_group[group] if other.id != record.id]
        pairs.append(Pair(record, record, 0))
        if same:
            pairs.append(Pair(record, rng.choice(same), 1))
        pairs.append(Pair(record, rng.choice(outside[group]), 2))
    return pairs


def relevance_records(records: Sequence[Record], seed: int = 0) -> list[Record]:
    """``relevance_pairs`` as a relevance manifest's records, what the ananet systems train on:
    each pair's image with its caption's text, labeled with its ``RELEVANCE_LABELS`` class; the
    id joins the image's and the caption's ids ("image~caption")."""
    return [Record(f"{pair.image.id}~{pair.caption.id}", pair.image.image, pair.caption.text,
                   (RELEVANCE_LABELS[pair.label],))
            for pair in relevance_pairs(records, seed)]
