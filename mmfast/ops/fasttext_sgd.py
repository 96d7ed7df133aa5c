"""``fasttext_sgd_``: fastText's per-example SGD training loop as one in-place op (DESIGN 3.1).

It is a training step, not a differentiable function: it has no autograd and updates its
parameters in place. It is a CPU-only training kernel (per-example Hogwild SGD has no good GPU
form); other devices train through the autograd path of ``mmfast.train.train``.
"""

import math
import numbers

import torch

from mmfast import _backend, reference
from mmfast.ops._checks import check_ids, check_same_device, check_tensor

_OP = "fasttext_sgd_"


def fasttext_sgd_(
    embedding: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    labels: torch.Tensor,
    lr_start: float,
    lr_end: float,
    threads: int | None = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Train the fastText model ``weight @ (sum_j w_j embedding[i_j]) + bias`` on B examples by
    per-example SGD, in place, as fastText does: on softmax cross-entropy when ``labels`` are
    class indices, on one-vs-all (the sum over the K classes of binary logistic losses,
    fastText's ``-loss ova``) when ``labels`` are a 0/1 target matrix.

    embedding [V, H], weight [K, H], bias [K] or None: contiguous float32 CPU tensors, updated
    in place. Example b is the bag ``indices[offsets[b]:offsets[b+1]]`` (int64 [nnz], offsets
    int64 [B+1] from 0 to nnz) with weights ``per_sample_weights`` [nnz] (None: the bag mean)
    and class ``labels[b]`` (int64 [B], in [0, K)) or targets ``labels[b]`` (float32 [B, K],
    each 0 or 1). The learning rate falls linearly from
    ``lr_start`` to ``lr_end`` over the examples, in order.

    ``threads`` (None: ``torch.get_num_threads()``) run Hogwild like fastText's: each takes a
    contiguous share of the examples with the whole decay over it, and all update the shared
    parameters without locks, so a concurrent update to a shared row can be lost (benign noise
    for sparse SGD). With one thread the result is exactly ``mmfast.reference.fasttext_sgd_``;
    with more, each run's result differs a little. Under ``torch.use_deterministic_algorithms
    (True)`` None means one thread, and ``threads`` > 1 is PyTorch's nondeterminism error (a
    warning with ``warn_only=True``).

    ``order`` (int64 [S], values in [0, B)) trains the examples in that order, e.g. a shuffle,
    without gathering the bags into a new buffer; None trains 0..B-1.

    Returns the losses [S] (S = B without ``order``), each step's loss before its own update.
    """
    check_tensor(_OP, "embedding", embedding, ndim=2, dtypes=(torch.float32,))
    check_tensor(_OP, "weight", weight, ndim=2, dtypes=(torch.float32,))
    if embedding.device.type != "cpu":
        raise ValueError(f"{_OP}: is a CPU training kernel, got embedding on {embedding.device} "
                         f"(train other devices with the autograd path)")
    if weight.shape[1] != embedding.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"{_OP}: weight must have shape [K >= 1, {embedding.shape[1]}] to match "
                         f"embedding, got {tuple(weight.shape)}")
    params = {"embedding": embedding, "weight": weight}
    if bias is not None:
        check_tensor(_OP, "bias", bias, ndim=1, dtypes=(torch.float32,))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{_OP}: bias must have shape [{weight.shape[0]}], "
                             f"got {tuple(bias.shape)}")
        params["bias"] = bias
    for name, value in params.items():
        check_same_device(_OP, name, value, embedding)
        if not value.is_contiguous():
            raise ValueError(f"{_OP}: {name} must be contiguous (it is updated in place), "
                             f"got strides {value.stride()}")
    one_vs_all = isinstance(labels, torch.Tensor) and labels.dim() == 2
    inputs = {"indices": (indices, 1, torch.int64), "offsets": (offsets, 1, torch.int64),
              "labels": (labels, 2, torch.float32) if one_vs_all else (labels, 1, torch.int64)}
    if per_sample_weights is not None:
        inputs["per_sample_weights"] = (per_sample_weights, 1, torch.float32)
    if order is not None:
        inputs["order"] = (order, 1, torch.int64)
    for name, (value, ndim, dtype) in inputs.items():
        check_tensor(_OP, name, value, ndim=ndim, dtypes=(dtype,))
        check_same_device(_OP, name, value, embedding)
    if one_vs_all and labels.shape[1] != weight.shape[0]:
        raise ValueError(f"{_OP}: one-vs-all labels must have shape [B, {weight.shape[0]}] "
                         f"(K = weight.shape[0]), got {tuple(labels.shape)}")
    batch, nnz = labels.shape[0], indices.shape[0]
    if offsets.shape[0] != batch + 1:
        raise ValueError(f"{_OP}: offsets must have B + 1 = {batch + 1} entries "
                         f"(B = labels.shape[0]), got {offsets.shape[0]}")
    if per_sample_weights is not None and per_sample_weights.shape[0] != nnz:
        raise ValueError(f"{_OP}: per_sample_weights must have shape [{nnz}] like indices, "
                         f"got {tuple(per_sample_weights.shape)}")
    lr_start, lr_end = _real("lr_start", lr_start), _real("lr_end", lr_end)
    if not (math.isfinite(lr_start) and math.isfinite(lr_end)):
        raise ValueError(f"{_OP}: lr_start and lr_end must be finite, got {lr_start} and {lr_end}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"{_OP}: threads must be an integer >= 1 or None, got {threads!r}")
    if _backend.use_reference():
        _check_values(embedding, weight, indices, offsets, labels, order)
        return reference.fasttext_sgd_(embedding, weight, bias, indices, offsets,
                                       per_sample_weights, labels, float(lr_start), float(lr_end),
                                       order)
    # The kernel checks the values (offsets, id, label and order ranges) itself, before any
    # update.
    return torch.ops.mmfast.fasttext_sgd_(embedding, weight, bias, indices, offsets,
                                          per_sample_weights, labels, float(lr_start),
                                          float(lr_end), threads, order)


def _real(name: str, value) -> float:
    """A learning rate as a float: a real number, or a one-element real tensor (as a tensor
    learning rate of torch.optim holds it)."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1
            and not value.is_complex() and value.dtype != torch.bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        what = (f"a {value.dtype} tensor of shape {tuple(value.shape)}"
                if isinstance(value, torch.Tensor) else type(value).__name__)
        raise TypeError(f"{_OP}: {name} must be a real number, got {what}")
    return float(value)


def _check_values(embedding, weight, indices, offsets, labels, order) -> None:
    """The value checks of the C++ kernel, for the reference path."""
    if int(offsets[0]) != 0 or int(offsets[-1]) != indices.shape[0]:
        raise ValueError(f"{_OP}: offsets must run from 0 to indices.size(0) = "
                         f"{indices.shape[0]}, got {int(offsets[0])} to {int(offsets[-1])}")
    if bool((offsets.diff() < 0).any()):
        raise ValueError(f"{_OP}: offsets must be non-decreasing")
    check_ids(_OP, "indices must be", indices, embedding.shape[0], error=IndexError)
    if labels.dim() == 2:
        if _backend.checks_values(labels) and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"{_OP}: one-vs-all labels must hold only 0 and 1")
    else:
        check_ids(_OP, "labels must be", labels, weight.shape[0], error=IndexError)
    if order is not None:
        check_ids(_OP, "order must be", order, labels.shape[0], error=IndexError)


@torch.library.register_fake("mmfast::fasttext_sgd_")
def _(embedding, weight, bias, indices, offsets, per_sample_weights, labels, lr_start, lr_end,
      threads=None, order=None):
    return embedding.new_empty((labels.shape[0] if order is None else order.shape[0],))
