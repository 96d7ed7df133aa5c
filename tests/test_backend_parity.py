"""The fused and reference backends accept and refuse the same inputs, with the same messages:
a model debugged on ``mmfast.backend("reference")`` fails there as it would on the kernels."""

import pytest
import torch

import mmfast
from mmfast.ops import cacnet_forward, cross_attention_cosine, fasttext_sgd_, pq_encode
from mmfast.ops.cacnet import PARAM_NAMES, param_shapes


def _with(value, index, tensor):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def _cross_attention_cases():
    V, T = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    nan, inf = float("nan"), float("inf")
    return {
        "t_lengths above N": lambda: cross_attention_cosine(V, T, torch.tensor([6, 1])),
        "t_lengths negative": lambda: cross_attention_cosine(V, T, torch.tensor([2, -1])),
        "NaN region": lambda: cross_attention_cosine(_with(nan, (1, 2, 0), V), T),
        "infinite valid word": lambda: cross_attention_cosine(
            V, _with(inf, (0, 1, 3), T), torch.tensor([2, 5])),
        # a NaN in padding is no error on either path
        "NaN padding": lambda: cross_attention_cosine(
            V, _with(nan, (0, 4, 0), T), torch.tensor([2, 5]))[0].isfinite().all(),
    }


def _pq_cases():
    x, codebooks = torch.randn(6, 8), torch.randn(4, 16, 2)
    perm = torch.stack([torch.randperm(8), torch.randperm(8)])
    return {
        "NaN row": lambda: pq_encode(_with(float("nan"), (3, 1), x), codebooks),
        "infinite codebook": lambda: pq_encode(x, _with(float("inf"), (1, 2, 0), codebooks)),
        "perm out of range": lambda: pq_encode(x, torch.randn(8, 16, 2), _with(8, (1, 0), perm)),
        "negative perm": lambda: pq_encode(x, torch.randn(8, 16, 2), _with(-1, (0, 5), perm)),
        "empty batch, bad codebook": lambda: pq_encode(
            x[:0], _with(float("nan"), (0, 0, 0), codebooks)).shape,
    }


def _cacnet_cases():
    shapes = param_shapes(6, 5, 4, 3)
    generator = torch.Generator().manual_seed(0)
    params = [0.1 * torch.randn(shapes[name], generator=generator) for name in PARAM_NAMES]
    x_img, x_txt = torch.randn(4, 6), torch.randn(4, 5)
    return {
        "NaN image": lambda: cacnet_forward(_with(float("nan"), (2, 1), x_img), x_txt, params),
        "infinite text": lambda: cacnet_forward(x_img, _with(float("-inf"), (0, 4), x_txt), params),
    }


def _fasttext_cases():
    def step(indices=None, offsets=None, labels=None):
        embedding, weight, bias = torch.zeros(10, 4), torch.zeros(3, 4), torch.zeros(3)
        indices = torch.tensor([1, 2, 3, 4]) if indices is None else indices
        offsets = torch.tensor([0, 2, 4]) if offsets is None else offsets
        labels = torch.tensor([0, 2]) if labels is None else labels
        return fasttext_sgd_(embedding, weight, bias, indices, offsets, None, labels, 0.1, 0.0)
    return {
        "id out of range": lambda: step(indices=torch.tensor([1, 2, 3, 10])),
        "label out of range": lambda: step(labels=torch.tensor([0, 3])),
        "decreasing offsets": lambda: step(offsets=torch.tensor([0, 5, 4])),
        "ova label 2": lambda: step(labels=torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])),
    }


CASES = {**{f"cross_attention_cosine: {k}": v for k, v in _cross_attention_cases().items()},
         **{f"pq_encode: {k}": v for k, v in _pq_cases().items()},
         **{f"cacnet_forward: {k}": v for k, v in _cacnet_cases().items()},
         **{f"fasttext_sgd_: {k}": v for k, v in _fasttext_cases().items()}}


def _outcome(call):
    try:
        result = call()
    except Exception as error:  # the type and the message are what is compared
        return type(error), str(error).split("\n")[0]
    return "returned", bool(result) if isinstance(result, torch.Tensor) else result


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_backends_give_the_same_outcome(case):
    with mmfast.backend("fused"):
        fused = _outcome(CASES[case])
    with mmfast.backend("reference"):
        reference = _outcome(CASES[case])
    assert fused == reference
