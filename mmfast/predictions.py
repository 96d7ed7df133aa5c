"""What ``mmfast classify`` writes for a batch of scored items: the chosen labels (the k best,
or those over their thresholds) and the rows, JSONL ``{"id": ..., "labels": [...], "scores":
[...]}`` or CSV ``id,labels,scores`` (``|``-joined), the scores rounded to 6 decimals.

Each step takes the whole batch: one sort, a few list operations, one call of json's C encoder
for the ids, and the score texts built as bytes by numpy, where writing one item at a time
(``round`` and ``json.dumps`` per value, an f-string per row) took half of classify's time.
The text is exactly what the per-item code wrote (tests/test_classify_stream.py holds it).
"""

import json
from itertools import repeat

import numpy as np
import torch

from mmfast import _backend
from mmfast._native import _C

# Scores whose significand times 10^6 is exact in float64 (24 bits + 14): their rounding to 6
# decimals is one vector op.
_EXACT_TIMES_1E6 = (torch.float32, torch.float16, torch.bfloat16)
_MICRO = 1_000_000


def chosen_labels(scores: torch.Tensor, k: int, thresholds: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The chosen labels of a batch ``scores`` [N, L], item after item, best first: their
    indices [total] (int64), their scores [total] (not rounded), and how many each item has
    [N] (None: ``k`` each). The ``k`` best, or with ``thresholds`` [L] every label scoring at
    least its threshold. One sort for the batch, not one per item."""
    if thresholds is None:
        values, indices = top_k(scores, k)
        return indices.flatten(), values.flatten(), None
    chosen = scores >= thresholds
    values, indices = torch.where(chosen, scores, -1.0).sort(dim=1, descending=True)
    counts = chosen.sum(1)
    keep = torch.arange(values.shape[1]) < counts[:, None]
    return indices[keep], values[keep], counts


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(k, dim=1)``; for k = 1 a max, 4x faster, where topk would give the same
    (no NaN, no tie for the best: topk's choice among equals is its own)."""
    if k == 1 and len(scores):
        values, indices = scores.max(dim=1, keepdim=True)
        if not (values.isnan().any() or ((scores == values).sum(1) > 1).any()):
            return values, indices
    return scores.topk(k, dim=1)


def round6(values: torch.Tensor) -> list[float]:
    """``[round(v, 6) for v in values.tolist()]`` of a 1-D tensor. For float32 and narrower in
    one vector op: v * 10^6 is exact in float64, so rounding it half to even is Python's
    correctly rounded decimal, and dividing gives the double nearest that decimal, as round's
    does."""
    if values.dtype in _EXACT_TIMES_1E6:
        return (values.double() * 1e6).round().div(1e6).tolist()
    return list(map(round, values.tolist(), repeat(6)))


def score_texts(values: torch.Tensor, as_csv: bool) -> list[str]:
    """``values`` [N] rounded to 6 decimals as json writes them (``json.dumps(round(v, 6))``),
    or with ``as_csv`` as ``f"{round(v, 6):g}"``.

    Scores 0 or in [1e-4, 1] (probabilities, but for the tiny ones) are spelled ``D.DDDDDD``
    with the trailing zeros cut: that decimal has at most 7 significant digits, the double
    nearest it is round's result, and no shorter decimal lies within half an ulp of it, so it
    is also that double's shortest repr (json's spelling), and ``{:g}``'s less a bare ``.0``.
    Anything else (below 1e-4: an exponent; above 1, negative, NaN; float64 scores) goes
    through round and json or format one value at a time."""
    micro = _micro(values)
    if micro is not None:
        return _decimal_texts(micro, as_csv)
    if not len(values):
        return []
    rounded = round6(values)
    if as_csv:
        return list(map("{:g}".format, rounded))
    return json.dumps(rounded)[1:-1].split(", ")


def _micro(values: torch.Tensor) -> np.ndarray | None:
    """``values`` [N] in millionths, rounded (int64), where every one is spelled
    ``D.DDDDDD`` (see ``score_texts``); else None."""
    if len(values) and values.dtype in _EXACT_TIMES_1E6:
        micro = (values.double() * 1e6).round()
        if bool((((micro >= 100) & (micro <= _MICRO)) | (micro == 0)).all()
                and not values.signbit().any()):
            return micro.long().numpy()
    return None


def _decimal_texts(micro: np.ndarray, as_csv: bool) -> list[str]:
    """``micro`` [N] (integers in [0, 10^6]) / 10^6 as ``D.DDDDDD`` less trailing zeros (one
    decimal kept, or with ``as_csv`` none and no point), built as bytes for the whole batch."""
    digits = np.empty((len(micro), 9), dtype=np.uint8)  # D . DDDDDD \n
    digits[:, 0] = micro // _MICRO + ord("0")
    digits[:, 1] = ord(".")
    rest = micro % _MICRO
    for place in range(7, 1, -1):
        digits[:, place] = rest % 10 + ord("0")
        rest //= 10
    digits[:, 8] = ord("\n")
    keep = np.ones(digits.shape, dtype=bool)
    # a decimal place stays while it or one after it is not zero
    keep[:, 2:8] = np.logical_or.accumulate(digits[:, 7:1:-1] != ord("0"), axis=1)[:, ::-1]
    if as_csv:  # {:g}: 1 and 0, no point
        keep[:, 1] = keep[:, 2]
    else:  # repr: 1.0 and 0.0
        keep[:, 2] = True
    return digits[keep].tobytes().decode("ascii").split("\n")[:-1]


def per_item(texts: list[str], counts: list[int] | None, k: int, separator: str) -> list[str]:
    """``texts`` of the chosen labels joined per item: ``counts`` of them, or ``k`` each."""
    if counts is None and k == 1:
        return texts
    if counts is None:
        return [separator.join(texts[start:start + k]) for start in range(0, len(texts), k)]
    joined, start = [], 0
    for count in counts:
        joined.append(separator.join(texts[start:start + count]))
        start += count
    return joined


def json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def json_strings(texts: list[str]) -> list[str]:
    """``[json_string(text) for text in texts]`` in one call of json's C encoder: within each
    string its quotes are escaped, so ``", "`` is found only between two of them."""
    if not texts:
        return []
    return [f'"{text}"' for text in json.dumps(texts, ensure_ascii=False)[2:-2].split('", "')]


def rows(ids: list[str], scores: torch.Tensor, k: int, thresholds: torch.Tensor | None,
         names: tuple[str, ...], label_json: list[str], as_csv: bool):
    """The output of items ``ids`` scored ``scores`` [N, len(names)]: the JSONL lines (one
    string; ``label_json`` the names as JSON strings), or with ``as_csv`` the CSV rows.
    JSONL of scores spelled as decimals is written by C++ (``json_rows`` in
    csrc/cpu/jsonl.cpp), the same text without a Python string per row."""
    indices, values, counts = chosen_labels(scores, k, thresholds)
    if not as_csv and not _backend.use_reference() and (micro := _micro(values)) is not None:
        text = _C.json_rows(ids, label_json, indices.numpy(), micro,
                            None if counts is None else counts.numpy(), k or 0)
        if text is not None:
            return text
    indices, counts = indices.tolist(), None if counts is None else counts.tolist()
    values = per_item(score_texts(values, as_csv), counts, k, "|" if as_csv else ", ")
    if as_csv:
        return zip(ids, per_item([names[i] for i in indices], counts, k, "|"), values)
    labels = per_item([label_json[i] for i in indices], counts, k, ", ")
    return "".join([f'{{"id": {item}, "labels": [{chosen}], "scores": [{value}]}}\n'
                    for item, chosen, value in zip(json_strings(ids), labels, values)])
