"""Robustness fuzz (the "Reliability" issue): seeded random inputs, valid and broken, for the raw
ops of ``mmfast.ops`` and for the ``mmfast`` command, held to three promises: no crash (segfault,
abort, hang), no traceback for a user's error, no silent data loss.

A case is made from its name alone (``ops:<op>:<seed>:<index>``, ``cli:<mode>:<seed>:<index>``),
so the parent and a child process make the same case, and one case can be rerun by itself. The
cases run in child processes that print each case before running it: a crash kills only the
child, and the parent names the case it died on and goes on after it. To rerun one case:

    .venv/bin/python tests/test_robustness.py ops <op> <seed> <index> 1
    .venv/bin/python tests/test_robustness.py cli <in-process|process> <seed> <folder> <index> 1

An op case passes when the fused op returns what the reference backend returns for the same
inputs (within the dtype's tolerance, by flash-attention's rule against a float64 reference), or
when both backends refuse it with the same exception, one of ``ERROR_TYPES`` whose message starts
with the op's name. A valid input must be accepted and a broken one refused, and no input changes
but the parameters ``fasttext_sgd_`` trains. A command case passes when it exits 0, 1 (bad data)
or 2 (bad usage), with one line on stderr starting with "mmfast" on 1 and 2; when it leaves its
inputs as they were, and its outputs too unless it succeeded; and when what it writes on success
holds what it reports.

Classes of cases mmfast gets wrong today are listed in KNOWN_OP_BUGS and KNOWN_COMMAND_BUGS: the
fuzz still runs their cases (a crash would count) but passes over the problems they explain, and
test_known_*_bugs pins each with a minimal reproducer under xfail(strict=True).

The default run makes a few hundred cases; the ``slow`` tier (MMFAST_SLOW=1) thousands more;
MMFAST_FUZZ_SEED draws other cases.
"""

import contextlib
import copy
import faulthandler
import functools
import io
import json
import math
import numbers
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mmfast
from mmfast import ops, reference
from mmfast._io import LOCK_FILE
from mmfast.cli import main
from mmfast.data import FeatureStore, Record, read_manifest, write_manifest
from mmfast.ops.bilinear_fusion import GATES
from mmfast.ops.cacnet import ACTIVATIONS, PARAM_NAMES, param_shapes
from mmfast.reference import cacnet as reference_cacnet
from mmfast.systems import load as load_checkpoint

SEED = int(os.environ.get("MMFAST_FUZZ_SEED", "0"))
# What an op may raise for a bad input (its message starting with the op's name).
ERROR_TYPES = (ValueError, TypeError, IndexError, NotImplementedError, RuntimeError)
CASE_TIMEOUT_S = 120  # a case running longer hangs: the child dumps its stack and exits


# ---- the random source of a case

class Draw:
    """The random choices of one case, seeded by its name alone."""

    def __init__(self, name: str):
        self.random = random.Random(name)
        self.generator = torch.Generator().manual_seed(self.random.getrandbits(63))

    def chance(self, probability: float) -> bool:
        return self.random.random() < probability

    def choice(self, options):
        return self.random.choice(list(options))

    def weighted(self, weights: dict):
        return self.random.choices(list(weights), list(weights.values()))[0]

    def size(self, limit: int = 70) -> int:
        """A dimension: mostly small, sometimes 0 or 1, sometimes past a SIMD width."""
        kind = self.weighted({"zero": 1, "one": 3, "small": 12, "large": 4})
        return {"zero": 0, "one": 1, "small": self.random.randint(2, 9),
                "large": self.random.randint(10, limit)}[kind]

    def layout(self) -> str:
        return self.weighted({"contiguous": 6, "strided": 2, "transposed": 2, "expanded": 1})

    def floats(self, shape, dtype=torch.float32, scale=1.0, layout="contiguous"):
        return _laid_out(lambda storage: (torch.randn(storage, generator=self.generator,
                                                      dtype=torch.float64) * scale).to(dtype),
                         shape, layout)

    def integers(self, shape, low: int, high: int, layout="contiguous"):
        return _laid_out(lambda storage: torch.randint(low, high, storage,
                                                       generator=self.generator), shape, layout)

    def restrided(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` as it is, or its values every other element of a wider tensor."""
        if not self.chance(0.3) or value.dim() == 0:
            return value
        return torch.stack([value, value], -1).flatten(-2)[..., ::2]


def _laid_out(make, shape, layout: str) -> torch.Tensor:
    """A tensor of ``shape`` with ``layout``'s strides, its values ``make(storage shape)``."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        return make((*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
    if layout in ("strided", "transposed") and shape:
        return make((*shape[:-1], 2 * shape[-1]))[..., ::2]
    if layout == "expanded" and shape:
        return make((1, *shape[1:])).expand(shape)
    return make(shape)


# ---- op cases

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WITH_FLOAT64 = FLOAT_DTYPES + (torch.float64,)
ALL_DTYPES = WITH_FLOAT64 + (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
# The fused op's error against float64 may be twice the reference's in the same dtype plus
# this share of the largest value (flash-attention's rule; tests/test_bilinear_fusion.py).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3,
             torch.bfloat16: 1.6e-2}


@dataclass
class OpCase:
    op: str
    inputs: dict  # the op's keyword arguments
    # "result", "error", or "either" where the docstring leaves it open (a NaN parameter):
    # then only the two backends' agreement counts
    expect: str = "result"
    change: str = ""  # what was broken or made unusual, "" for a plain valid case
    grad: bool = False  # also compare the gradients of the differentiable inputs

    def describe(self) -> str:
        arguments = ", ".join(f"{name}={_show(value)}" for name, value in self.inputs.items())
        return (f"{self.op}({arguments})" + (f" <- {self.change}" if self.change else "")
                + (" with gradients" if self.grad else "") + f"; expect {self.expect}")


@dataclass(frozen=True)
class OpRules:
    """What breaks an op's input, for the mutations shared by every op."""

    dtypes_ok: Callable[[dict], bool]
    constrained: Callable[[dict], list]  # (slot, axis) pairs whose size another input shares
    # expectation of a NaN or inf at slot[index]; None: no answer is defined, so none is put
    nonfinite: Callable[[dict, str, tuple], str | None]
    bad_values: Callable[[Draw, dict], tuple | None]  # -> (change, expectation) or None
    optional: tuple[str, ...] = ()  # tensor arguments that may be None
    scalars: dict = field(default_factory=dict)  # name -> (valid values, broken values)
    contiguous: tuple[str, ...] = ()  # tensors that must be contiguous


@dataclass(frozen=True)
class OpSpec:
    generate: Callable[[Draw], OpCase]  # a valid case
    rules: OpRules
    call: Callable[[dict], dict]  # the public op: outputs by name
    exact: Callable[[dict], dict] | None  # the reference in float64; None: _pq_code_problems
    differentiable: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()  # inputs the op updates in place
    comparable: Callable[[dict], bool] = lambda inputs: True  # values depend on inputs alone
    # How much a rounding of the inputs can grow in the outputs, beyond their size: the
    # tolerance against float64 scales with it (a softmax of scale * S grows it by |scale|).
    condition: Callable[[dict], float] = lambda inputs: 1.0


def _dtype(value):
    return value.dtype if isinstance(value, torch.Tensor) else None


def _one_dtype(names, allowed):
    """The check that ``names`` (those not None) share one dtype out of ``allowed``."""
    def ok(inputs):
        dtypes = {_dtype(inputs[name]) for name in names if inputs.get(name) is not None}
        return len(dtypes) == 1 and dtypes <= set(allowed)
    return ok


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        text = f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
        return text if value.is_contiguous() else f"{text} strides {value.stride()}"
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(item, torch.Tensor) for item in value):
        shown = ", ".join(map(_show, value))
        return f"[{shown}]" if isinstance(value, list) else f"({shown})"
    if isinstance(value, np.ndarray):
        return f"ndarray{list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the tensors of a case: "u", or "params[3]" inside a list
def _slots(inputs: dict) -> list[str]:
    slots = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            slots.append(name)
        elif isinstance(value, (list, tuple)):
            slots += [f"{name}[{i}]" for i, item in enumerate(value)
                      if isinstance(item, torch.Tensor)]
    return slots


def _get(inputs: dict, slot: str):
    name, _, index = slot.partition("[")
    return inputs[name][int(index[:-1])] if index else inputs[name]


def _put(inputs: dict, slot: str, value) -> None:
    name, _, index = slot.partition("[")
    if index:
        items = list(inputs[name])
        items[int(index[:-1])] = value
        inputs[name] = type(inputs[name])(items)
    else:
        inputs[name] = value


# -- mutations shared by the ops: each breaks (or varies) one thing and returns
# (change, expectation), or None where it does not apply
def _retype(draw, case, rules):
    slot = draw.choice(_slots(case.inputs))
    value = _get(case.inputs, slot)
    dtype = draw.choice(d for d in ALL_DTYPES if d != value.dtype)
    _put(case.inputs, slot, value.to(dtype))
    return (f"{slot} as {str(dtype).removeprefix('torch.')}",
            "result" if rules.dtypes_ok(case.inputs) else "error")


def _rerank(draw, case, rules):
    slot = draw.choice(_slots(case.inputs))
    value = _get(case.inputs, slot)
    if value.dim() >= 2 and draw.chance(0.5):
        _put(case.inputs, slot, value.flatten(0, 1))
        return f"{slot} flattened", "error"
    _put(case.inputs, slot, value.unsqueeze(draw.choice([0, value.dim()])))
    return f"{slot} with a dimension added", "error"


def _resize(draw, case, rules):
    places = rules.constrained(case.inputs)
    if not places:
        return None
    slot, axis = draw.choice(places)
    value = _get(case.inputs, slot)
    size = value.shape[axis]
    new = draw.choice(n for n in (size - 1, size + 1, size + 2) if n >= 0)
    if new < size:
        value = value.narrow(axis, 0, new)
    else:  # zeros: valid ids and 0/1 labels, so that only the size is wrong
        padding = list(value.shape)
        padding[axis] = new - size
        value = torch.cat([value, torch.zeros(padding, dtype=value.dtype)], axis)
    _put(case.inputs, slot, value)
    return f"{slot}.shape[{axis}] {size} -> {new}", "error"


def _nonfinite(draw, case, rules):
    slots = [slot for slot in _slots(case.inputs) if _get(case.inputs, slot).is_floating_point()
             and _get(case.inputs, slot).numel()]
    if not slots:
        return None
    slot = draw.choice(slots)
    index = tuple(draw.random.randrange(n) for n in _get(case.inputs, slot).shape)
    expect = rules.nonfinite(case.inputs, slot, index)
    if expect is None:
        return None
    number = draw.choice([math.nan, math.inf, -math.inf])
    _put(case.inputs, slot, _with_value(_get(case.inputs, slot), index, number))
    return f"{slot}{list(index)} = {number}", expect


def _rescalar(draw, case, rules):
    if not rules.scalars:
        return None
    name = draw.choice(rules.scalars)
    valid, broken = rules.scalars[name]
    if draw.chance(0.5):
        case.inputs[name] = draw.choice(valid)
        return f"{name}={case.inputs[name]!r}", "result"
    case.inputs[name] = draw.choice(broken)
    return f"{name}={case.inputs[name]!r}", "error"


def _untensor(draw, case, rules):
    slot = draw.choice(_slots(case.inputs))
    value = _get(case.inputs, slot)
    replacements = {"a list": value.tolist(), "an ndarray": np.array(value.tolist()),
                    "a float": 1.0}
    if slot not in rules.optional:
        replacements["None"] = None
    what = draw.choice(replacements)
    _put(case.inputs, slot, replacements[what])
    return f"{slot} as {what}", "error"


def _discontiguous(draw, case, rules):
    slots = [name for name in rules.contiguous if case.inputs.get(name) is not None]
    if not slots:
        return None
    slot = draw.choice(slots)
    value = _get(case.inputs, slot)
    layout = draw.choice(["strided", "transposed", "expanded"])
    value = draw.floats(value.shape, value.dtype, 0.1, layout)
    _put(case.inputs, slot, value)
    # a view of size-1 dimensions can still be contiguous
    return f"{slot} {layout}", "result" if value.is_contiguous() else "error"


def _bad_values(draw, case, rules):
    return rules.bad_values(draw, case.inputs)


MUTATIONS = (_retype, _rerank, _resize, _nonfinite, _rescalar, _untensor, _discontiguous,
             _bad_values)


def _with_value(value: torch.Tensor, index, number) -> torch.Tensor:
    value = value.clone()  # a view or an expansion shares its memory
    value[index] = number
    return value


# -- bilinear_fusion
def _bilinear_case(draw: Draw) -> OpCase:
    batch, left, right, out = (draw.size() for _ in range(4))
    dtype = draw.choice(WITH_FLOAT64)
    return OpCase("bilinear_fusion", {
        "u": draw.floats((batch, left), dtype, layout=draw.layout()),
        "v": draw.floats((batch, right), dtype, layout=draw.layout()),
        # scaled like torch.nn.Bilinear's initialization: outputs of order 1, even in float16
        "weight": draw.floats((out, left, right), dtype, max(left, 1) ** -0.5, draw.layout()),
        "bias": draw.floats((out,), dtype, layout=draw.layout()) if draw.chance(0.7) else None,
        "gate": draw.choice(GATES),
    })


BILINEAR_RULES = OpRules(
    dtypes_ok=_one_dtype(("u", "v", "weight", "bias"), WITH_FLOAT64),
    constrained=lambda inputs: [("u", 0), ("u", 1), ("v", 0), ("v", 1), ("weight", 1),
                                ("weight", 2)]
    + ([("weight", 0), ("bias", 0)] if inputs["bias"] is not None else []),
    # documented: a NaN or infinity reaches the rows (or columns) it touches; but where P or Q
    # is 0 the form has no terms (0 on the kernels; the reference's einsum keeps a NaN of v,
    # not one of u)
    nonfinite=lambda inputs, slot, index: None if 0 in inputs["weight"].shape[1:] else "result",
    bad_values=lambda draw, inputs: None,
    optional=("bias",),
    scalars={"gate": (list(GATES), ["NONE", "", "sigmoid", None, 1, ("first",)])},
)


# -- cross_attention_cosine
def _cross_attention_case(draw: Draw) -> OpCase:
    batch, regions, words, width = (draw.size(limit=40) for _ in range(4))
    dtype = draw.choice(WITH_FLOAT64)
    lengths = draw.integers((batch,), 0, words + 1, draw.layout()) if draw.chance(0.6) else None
    return OpCase("cross_attention_cosine", {
        "V": draw.floats((batch, regions, width), dtype, layout=draw.layout()),
        "T": draw.floats((batch, words, width), dtype, layout=draw.layout()),
        "t_lengths": lengths,
        "scale": draw.choice([1.0, max(width, 1) ** -0.5, 2]),
    })


def _cross_attention_nonfinite(inputs, slot, index):
    lengths = inputs["t_lengths"]
    padding = slot == "T" and lengths is not None and index[1] >= int(lengths[index[0]])
    return "result" if padding else "error"  # the padding takes no part


def _cross_attention_bad_lengths(draw, inputs):
    batch, words = inputs["V"].shape[0], inputs["T"].shape[1]
    if batch == 0:
        return None
    lengths = inputs["t_lengths"]
    lengths = torch.full((batch,), words) if lengths is None else lengths.clone()
    item = draw.random.randrange(batch)
    lengths[item] = draw.choice([-1, -7, words + 1, words + 9])
    inputs["t_lengths"] = lengths
    return f"t_lengths[{item}] = {int(lengths[item])} (N = {words})", "error"


def _cross_attention_dtypes_ok(inputs):
    lengths = inputs["t_lengths"]
    return (_one_dtype(("V", "T"), WITH_FLOAT64)(inputs)
            and (lengths is None or _dtype(lengths) == torch.int64))


CROSS_ATTENTION_RULES = OpRules(
    dtypes_ok=_cross_attention_dtypes_ok,
    constrained=lambda inputs: [("V", 0), ("V", 2), ("T", 0), ("T", 2)]
    + ([("t_lengths", 0)] if inputs["t_lengths"] is not None else []),
    nonfinite=_cross_attention_nonfinite,
    bad_values=_cross_attention_bad_lengths,
    optional=("t_lengths",),
    scalars={"scale": ([0, -1.5, 3, 0.01, 25.0, np.float64(0.5)],
                       [math.nan, math.inf, -math.inf, "1.0", None, True, 1j])},
)


# -- pq_encode
def _pq_case(draw: Draw) -> OpCase:
    batch = draw.size()
    subspaces, dsub = max(1, draw.size(limit=16)), max(1, draw.size(limit=16))
    centroids = draw.weighted({2: 2, 3: 2, 16: 3, 256: 2, 257: 1, 1000: 1, 32769: 0.3,
                               65536: 0.3})
    if centroids > 1000:  # int32 codes: kept small, the reference walks every centroid
        batch, subspaces, dsub = min(batch, 3), min(subspaces, 2), min(dsub, 4)
    dim = subspaces * dsub
    repetitions = draw.choice([1, 2, 3]) if draw.chance(0.5) else None
    perm = None
    if repetitions is not None:
        perm = (torch.stack([torch.randperm(dim, generator=draw.generator)
                             for _ in range(repetitions)])
                if draw.chance(0.7) else draw.integers((repetitions, dim), 0, dim))
        perm = draw.restrided(perm)  # a perm need not be a permutation: columns may repeat
    codebooks = draw.floats(((repetitions or 1) * subspaces, centroids, dsub),
                            draw.choice(WITH_FLOAT64), layout=draw.layout())
    if draw.chance(0.2):  # equal centroids: the lowest index must win the tie
        codebooks = codebooks.clone()
        codebooks[:, 1] = codebooks[:, 0]
    return OpCase("pq_encode", {
        "x": draw.floats((batch, dim), draw.choice(FLOAT_DTYPES), layout=draw.layout()),
        "codebooks": codebooks,
        "perm": perm,
    })


def _pq_bad_values(draw, inputs):
    x, codebooks, perm = inputs["x"], inputs["codebooks"], inputs["perm"]
    # the kernels check values only when there is something to encode
    expect = "error" if x.shape[0] else "either"
    if draw.chance(0.5):
        # the limit's neighbour only where its codebooks stay small
        centroids = draw.choice([0, 1] + [65537] * (codebooks.shape[0] * codebooks.shape[2] <= 16))
        shape = (codebooks.shape[0], centroids, codebooks.shape[2])
        inputs["codebooks"] = draw.floats(shape, codebooks.dtype)
        return f"codebooks with {centroids} centroids", "error"
    dim = x.shape[1]
    perm = torch.stack([torch.arange(dim)]) if perm is None else perm.clone()
    place = (draw.random.randrange(perm.shape[0]), draw.random.randrange(dim))
    perm[place] = draw.choice([-1, -dim - 1, dim, dim + 4])
    inputs["perm"] = perm
    return f"perm{list(place)} = {int(perm[place])} (D = {dim})", expect


PQ_RULES = OpRules(
    dtypes_ok=lambda inputs: _dtype(inputs["x"]) in FLOAT_DTYPES
    and _dtype(inputs["codebooks"]) in WITH_FLOAT64
    and (inputs["perm"] is None or _dtype(inputs["perm"]) == torch.int64),
    constrained=lambda inputs: [("x", 1), ("codebooks", 0), ("codebooks", 2)]
    + ([("perm", 0), ("perm", 1)] if inputs["perm"] is not None else []),
    nonfinite=lambda inputs, slot, index: (
        "error" if slot == "x" or inputs["x"].shape[0] else "result"),
    bad_values=_pq_bad_values,
    optional=("perm",),
)


def _pq_code_problems(inputs, codes, reference_codes) -> list[str]:
    """Codes may differ only between centroids equally near within float32 rounding, never
    between equal centroids (the lowest index wins a tie)."""
    x, codebooks, perm = inputs["x"].double(), inputs["codebooks"].double(), inputs["perm"]
    per_repetition = codebooks.shape[0] // (1 if perm is None else perm.shape[0])
    dsub = codebooks.shape[2]
    problems = []
    for row, subspace in (codes != reference_codes).nonzero().tolist():
        repetition, m = divmod(subspace, per_repetition)
        columns = x[row] if perm is None else x[row, perm[repetition]]
        sub = columns[m * dsub:(m + 1) * dsub]
        code, expected = int(codes[row, subspace]), int(reference_codes[row, subspace])
        got, want = codebooks[subspace, code], codebooks[subspace, expected]
        gap = abs(float(((sub - got) ** 2).sum() - ((sub - want) ** 2).sum()))
        allowed = 1e-5 * float(1 + sub @ sub + max(got @ got, want @ want))
        if torch.equal(got, want) or gap > allowed:
            problems.append(f"codes[{row}, {subspace}] = {code}, the reference's {expected} "
                            f"(distances differ by {gap:.3g}, allowed {allowed:.3g})")
    return problems[:5]


# -- fasttext_sgd_
def _fasttext_case(draw: Draw) -> OpCase:
    vocabulary, hidden, classes = max(1, draw.size()), draw.size(limit=32), max(1, draw.size(16))
    batch = draw.size(limit=20)
    bags = [draw.random.randint(0, 5) for _ in range(batch)]
    nnz = sum(bags)
    if draw.chance(0.3):  # one-vs-all
        labels = draw.integers((batch, classes), 0, 2).float()
    else:
        labels = draw.integers((batch,), 0, classes)
    lr_start = draw.random.uniform(0.01, 1.0)
    return OpCase("fasttext_sgd_", {
        "embedding": draw.floats((vocabulary, hidden), scale=0.1),
        "weight": draw.floats((classes, hidden), scale=0.1),
        "bias": draw.floats((classes,), scale=0.1) if draw.chance(0.7) else None,
        "indices": draw.restrided(draw.integers((nnz,), 0, vocabulary)),
        "offsets": draw.restrided(torch.tensor([0, *accumulate(bags)])),
        "per_sample_weights": draw.floats((nnz,), scale=0.5, layout=draw.layout())
        if draw.chance(0.4) else None,
        "labels": draw.restrided(labels),
        "lr_start": lr_start,
        "lr_end": draw.choice([0.0, lr_start / 2, lr_start]),
        "threads": draw.weighted({1: 6, None: 1, 2: 2, 3: 1}),
    })


def _fasttext_labels_ok(inputs):
    labels = inputs["labels"]
    return isinstance(labels, torch.Tensor) and (labels.dim(), labels.dtype) in (
        (1, torch.int64), (2, torch.float32))


def _fasttext_constrained(inputs):
    places = [("embedding", 1), ("weight", 1), ("offsets", 0), ("labels", 0), ("indices", 0)]
    if inputs["per_sample_weights"] is not None:
        places.append(("per_sample_weights", 0))
    if inputs["bias"] is not None:
        places += [("bias", 0), ("weight", 0)]
    if inputs["labels"].dim() == 2:
        places += [("labels", 1), ("weight", 0)]
    return places


def _fasttext_bad_values(draw, inputs):
    indices, offsets, labels = inputs["indices"], inputs["offsets"], inputs["labels"]
    batch, classes = labels.shape[0], inputs["weight"].shape[0]
    what = draw.choice(["indices", "labels", "offsets"])
    if what == "indices" and indices.numel():
        place = draw.random.randrange(indices.numel())
        number = draw.choice([-1, inputs["embedding"].shape[0], 10**6])
        inputs["indices"] = _with_value(indices, place, number)
        return f"indices[{place}] = {number}", "error"
    if what == "labels" and labels.numel():
        place = tuple(draw.random.randrange(n) for n in labels.shape)
        number = draw.choice([2.0, 0.5, -1.0] if labels.dim() == 2 else [-1, classes, classes + 5])
        inputs["labels"] = _with_value(labels, place, number)
        return f"labels{list(place)} = {number}", "error"
    changes = {"offsets[0] = 1": (0, 1), "offsets[-1] past indices": (-1, int(offsets[-1]) + 1)}
    if batch >= 2:
        changes["offsets decreasing"] = (1, int(offsets[2]) + 1)
    change = draw.choice(changes)
    inputs["offsets"] = _with_value(offsets, *changes[change])
    return change, "error"


def _fasttext_outputs(function, inputs: dict) -> dict:
    """The losses and the parameters the step updated."""
    losses = function(**inputs)
    return {"losses": losses, **{name: inputs[name] for name in ("embedding", "weight", "bias")
                                 if inputs[name] is not None}}


FASTTEXT_RULES = OpRules(
    dtypes_ok=lambda inputs: _one_dtype(("embedding", "weight", "bias", "per_sample_weights"),
                                        (torch.float32,))(inputs)
    and _one_dtype(("indices", "offsets"), (torch.int64,))(inputs) and _fasttext_labels_ok(inputs),
    constrained=_fasttext_constrained,
    # 0/1 labels are checked; a NaN parameter is not, and trains NaN on both backends
    nonfinite=lambda inputs, slot, index: "error" if slot == "labels" else "either",
    bad_values=_fasttext_bad_values,
    optional=("bias", "per_sample_weights"),
    scalars={"lr_start": ([0.0, -0.1, 2, torch.tensor(0.3)], [math.nan, math.inf, "0.1", None]),
             "lr_end": ([0.0, 1, 0.7], [-math.inf, math.nan, "0", None]),
             "threads": ([1, 2, 4, None], [0, -1, 1.5, True, "2"])},
    contiguous=("embedding", "weight", "bias"),
)


# -- cacnet_forward
def _cacnet_case(draw: Draw) -> OpCase:
    batch, image_dim, text_dim = draw.size(), draw.size(limit=40), draw.size(limit=40)
    half, classes = draw.size(limit=24), draw.size(limit=12)
    dtype = draw.choice([torch.float32, torch.float64])
    shapes = param_shapes(image_dim, text_dim, half, classes)
    params = [draw.floats(shapes[name], dtype, 0.3, draw.layout()) for name in PARAM_NAMES]
    return OpCase("cacnet_forward", {
        "x_img": draw.floats((batch, image_dim), dtype, layout=draw.layout()),
        "x_txt": draw.floats((batch, text_dim), dtype, layout=draw.layout()),
        "params": params if draw.chance(0.85) else tuple(params),  # any Sequence
        "activation": draw.choice(ACTIVATIONS),
    })


def _cacnet_bad_params(draw, inputs):
    params = list(inputs["params"])
    broken = {"14 params": params[:-1], "16 params": params + params[-1:],
              "params as a dict": dict(zip(PARAM_NAMES, params)),
              "params as a generator": (p for p in params),
              "params as one tensor": params[0]}
    change = draw.choice(broken)
    inputs["params"] = broken[change]
    return change, "error"


CACNET_RULES = OpRules(
    dtypes_ok=lambda inputs: _dtype(inputs["x_img"]) in (torch.float32, torch.float64)
    and len({_dtype(inputs["x_img"]), _dtype(inputs["x_txt"]),
             *map(_dtype, inputs["params"])}) == 1,
    constrained=lambda inputs: [("x_img", 0), ("x_img", 1), ("x_txt", 0), ("x_txt", 1)]
    + [(f"params[{i}]", axis) for i, p in enumerate(inputs["params"]) for axis in range(p.dim())],
    # the inputs are checked; a NaN parameter is not, and reaches the logits on both backends
    nonfinite=lambda inputs, slot, index: "either" if slot.startswith("params") else "error",
    bad_values=_cacnet_bad_params,
    scalars={"activation": (list(ACTIVATIONS), ["gelu", "", "RELU", None, 0])},
)


def _cacnet_exact(inputs):
    named = dict(zip(PARAM_NAMES, inputs["params"]))
    return {"logits": reference_cacnet.full_logits(inputs["x_img"], inputs["x_txt"], named,
                                                   inputs["activation"])}


OPS = {
    "bilinear_fusion": OpSpec(
        _bilinear_case, BILINEAR_RULES, lambda inputs: {"out": ops.bilinear_fusion(**inputs)},
        lambda inputs: {"out": reference.bilinear_fusion(**inputs)},
        differentiable=("u", "v", "weight", "bias")),
    "cross_attention_cosine": OpSpec(
        _cross_attention_case, CROSS_ATTENTION_RULES,
        lambda inputs: dict(zip(("v_bar", "t_bar"), ops.cross_attention_cosine(**inputs))),
        lambda inputs: dict(zip(("v_bar", "t_bar"), reference.cross_attention_cosine(**inputs))),
        differentiable=("V", "T"),
        condition=lambda inputs: max(abs(float(inputs["scale"])), 1.0)),
    "pq_encode": OpSpec(_pq_case, PQ_RULES, lambda inputs: {"codes": ops.pq_encode(**inputs)},
                        None),
    "fasttext_sgd_": OpSpec(
        _fasttext_case, FASTTEXT_RULES,
        lambda inputs: _fasttext_outputs(ops.fasttext_sgd_, inputs),
        lambda inputs: _fasttext_outputs(reference.fasttext_sgd_,
                                         {k: v for k, v in inputs.items() if k != "threads"}),
        updated=("embedding", "weight", "bias"),
        # Hogwild threads each decay the learning rate over their own share of the examples
        comparable=lambda inputs: inputs["threads"] == 1),
    "cacnet_forward": OpSpec(
        _cacnet_case, CACNET_RULES, lambda inputs: {"logits": ops.cacnet_forward(**inputs)},
        _cacnet_exact, differentiable=("x_img", "x_txt", "params")),
}


def _op_case(op: str, seed: int, index: int) -> OpCase:
    draw = Draw(f"ops:{op}:{seed}:{index}")
    spec = OPS[op]
    case = spec.generate(draw)
    if draw.chance(0.65):
        for mutation in draw.random.sample(MUTATIONS, len(MUTATIONS)):
            applied = mutation(draw, case, spec.rules)
            if applied:
                case.change, case.expect = applied
                break
    case.grad = (bool(spec.differentiable) and case.expect == "result" and draw.chance(0.3)
                 and all(bool(_get(case.inputs, slot).isfinite().all())
                         for slot in _slots(case.inputs)))
    return case


def _evaluate(call, inputs: dict, differentiable) -> dict:
    """``call(inputs)``'s outputs and, for the ``differentiable`` inputs, the gradients of a
    fixed weighted sum of the outputs ("grad <slot>")."""
    inputs, leaves = dict(inputs), {}
    for name in differentiable:
        value = inputs[name]
        if isinstance(value, (list, tuple)):
            inputs[name] = type(value)(item.detach().requires_grad_() for item in value)
            leaves |= {f"{name}[{i}]": item for i, item in enumerate(inputs[name])}
        elif value is not None:
            inputs[name] = leaves[name] = value.detach().requires_grad_()
    outputs = call(inputs)
    if not leaves:
        return outputs
    objective = sum((output.double() * torch.linspace(-1, 1, output.numel(), dtype=torch.float64)
                     .reshape(output.shape)).sum() for output in outputs.values())
    grads = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
    return {**{name: output.detach() for name, output in outputs.items()},
            **{f"grad {slot}": torch.zeros_like(leaf) if grad is None else grad
               for (slot, leaf), grad in zip(leaves.items(), grads)}}


def _same(old: torch.Tensor, new: torch.Tensor) -> bool:
    if old.shape != new.shape or old.dtype != new.dtype:
        return False
    if old.is_floating_point():
        return bool(((old == new) | (old.isnan() & new.isnan())).all())
    return torch.equal(old, new)


def _run_op(spec: OpSpec, case: OpCase, backend: str):
    """(outputs, or the exception raised; the inputs the call changed that it may not)."""
    before = {slot: _get(case.inputs, slot).clone() for slot in _slots(case.inputs)}
    try:
        with mmfast.backend(backend):
            result = _evaluate(spec.call, case.inputs, spec.differentiable if case.grad else ())
    except Exception as error:  # judged by the caller: type and message
        result = error
    may_change = () if isinstance(result, Exception) else spec.updated
    changed = [slot for slot, old in before.items()
               if slot not in may_change and not _same(old, _get(case.inputs, slot))]
    return result, changed


def _said(result) -> str:
    """What a call did, to compare the backends: its exception's type and first line."""
    if isinstance(result, Exception):
        return f"raised {type(result).__name__}: {(str(result).splitlines() or [''])[0]}"
    return "returned"


def _largest(values: torch.Tensor, where: torch.Tensor) -> float:
    return float(values[where].abs().max()) if bool(where.any()) else 0.0


def _value_problems(spec: OpSpec, case: OpCase, fused: dict, plain: dict) -> list[str]:
    """The fused outputs against the reference backend's (``plain``) and, where the values
    depend on the inputs alone, against the float64 reference (``case`` is a fresh copy)."""
    problems = []
    for name, got in fused.items():
        want = plain.get(name)
        if want is None or got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"{name} is {_show(got)}, the reference's {_show(want)}")
    if problems:
        return problems
    all_finite = all(bool(_get(case.inputs, slot).isfinite().all())
                     for slot in _slots(case.inputs) if _get(case.inputs, slot).is_floating_point())
    if not spec.comparable(case.inputs):
        return [f"{name} is not finite, from finite inputs" for name, got in fused.items()
                if all_finite and not bool(got.isfinite().all())]
    if spec.exact is None:
        return _pq_code_problems(case.inputs, fused["codes"], plain["codes"])
    upcast = {name: value.double() if isinstance(value, torch.Tensor) and value.is_floating_point()
              else type(value)(item.double() for item in value) if isinstance(value, (list, tuple))
              else value for name, value in case.inputs.items()}
    exact = _evaluate(spec.exact, upcast, spec.differentiable if case.grad else ())
    for name, got in fused.items():
        want, truth = plain[name], exact[name]
        # as the float64 reference, or as the reference in the same dtype (which may overflow,
        # or, in a bfloat16 GEMM, spread a NaN to other rows)
        if not (torch.equal(got.isfinite(), truth.isfinite())
                or torch.equal(got.isfinite(), want.isfinite())):
            problems.append(f"{name} is not finite where the references are, or the other way")
            continue
        both = got.isfinite() & want.isfinite() & truth.isfinite()
        error = _largest(got.double() - truth, both)
        baseline = _largest(want.double() - truth, both)
        allowed = 2 * baseline + (TOLERANCE[got.dtype] * spec.condition(case.inputs)
                                  * max(_largest(truth, both), 1.0))
        if error > allowed:
            problems.append(f"{name} is off by {error:.3g} against float64 (the reference "
                            f"backend by {baseline:.3g}; allowed {allowed:.3g})")
    return problems


def _op_case_problems(make: Callable[[], OpCase]) -> list[str]:
    """The problems of the case ``make()`` makes; each backend runs a fresh copy of it
    (fasttext_sgd_ trains in place)."""
    case = make()
    op, spec = case.op, OPS[case.op]
    outcomes = {backend: _run_op(spec, make(), backend) for backend in ("fused", "reference")}
    problems = []
    for backend, (result, changed) in outcomes.items():
        problems += [f"{backend}: changed its input {slot}" for slot in changed]
        if isinstance(result, Exception) and not (
                isinstance(result, ERROR_TYPES) and str(result).startswith(f"{op}: ")):
            problems.append(f"{backend}: {_said(result)} (not one of ERROR_TYPES naming {op})")
    fused, plain = outcomes["fused"][0], outcomes["reference"][0]
    if isinstance(fused, Exception) or isinstance(plain, Exception):
        if _said(fused) != _said(plain):
            problems.append(f"the fused backend {_said(fused)}; the reference {_said(plain)}")
        if case.expect == "result":
            problems.append(f"refused a valid input: {_said(fused)}")
        return problems
    if case.expect == "error":
        problems.append("accepted a broken input")
    return problems + _value_problems(spec, make(), fused, plain)


# ---- command cases

# Records that are not {"id": str, "image": str, "text": str, "labels": [str, ...]}.
BAD_RECORDS = {
    "cut short": b'{"id": "i1", "text": ',
    "id a number": b'{"id": 5, "text": "x"}',
    "text a list": b'{"id": "i1", "text": ["x"]}',
    "labels a number": b'{"id": "i1", "text": "x", "labels": 3}',
    "a label a number": b'{"id": "i1", "text": "x", "labels": [1, "c0"]}',
    "image a number": b'{"id": "i1", "text": "x", "image": 7}',
    "repeated key": b'{"id": "i1", "text": "x", "id": 3}',  # the last one counts
    "no id": b'{"text": "x"}',
    "no text": b'{"id": "i1"}',
    "a list": b'[1, 2]',
    "a string": b'"a string"',
    "null": b'null',
    "infinity": b'1e999',
    "latin-1": b'{"id": "i1", "text": "caf\xe9"}',
    "lone surrogate": b'{"id": "i1", "text": "x\\ud800"}',
    "byte-order mark": b'\xef\xbb\xbf{"id": "i1", "text": "x"}',
    "control character": b'{"id": "i1", "text": "a\x00b"}',
    "binary": b'\x89PNG\r\n\x1a\n\x00\x00',
    "huge number": b'{"id": "i1", "text": "x", "labels": [' + b'9' * 5000 + b']}',
    "deeply nested": b'{"id": "i1", "text": ' + b'[' * 100_000 + b']' * 100_000 + b'}',
}
BROKEN_CSV = {
    "no text column": b'id,image,labels\ni1,,c0\n',
    "unterminated quote": b'id,image,text,labels\ni1,,"unterminated,c0\n',
    "latin-1": b'id,image,text,labels\ni1,,caf\xe9,c0\n',
    "extra fields": b'id,image,text,labels\ni1,,a,c0,extra,fields\n',
    "header only": b'id,image,text,labels\n',
    "blank lines": b'\n\n',
    "giant field": b'id,image,text,labels\ni1,,' + b'x' * 200_000 + b',c0\n',
}
# Numbers a user may mistype; the huge one only where a huge value costs no memory or time.
BROKEN_NUMBERS = ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e309", "abc", "", "0x10", "2.5",
                  "-" + "9" * 25]
HUGE_NUMBER = "9" * 25
JSON_ODDITIES = [None, True, -1, 0, 2.5, 1e308, math.nan, 10**30, "", "x", [], {}, [1, "a"],
                 {"a": 1}]
FOLDER = "<folder>"
KILLED_PID = 4_194_305  # past /proc/sys/kernel/pid_max's limit: no process has it


class CaseFolder:
    """The files of one command case, in its own folder: copies of the base's, some broken,
    registered as inputs (never to change) or outputs (to change only when the command
    succeeds). ``notes`` say what was broken, for the case's description."""

    def __init__(self, draw: Draw, base: Path, folder: Path):
        self.draw, self.base, self.folder = draw, base, folder
        self.inputs: list[Path] = []
        self.outputs: list[Path] = []
        self.notes: list[str] = []
        self.rows: int | None = None  # records classify must write when it succeeds

    def manifest(self, name="input.jsonl", source="items.jsonl") -> tuple[str, int | None]:
        """A manifest, well-formed or not, and its count of good records where known."""
        draw, path = self.draw, self.folder / name
        lines = (self.base / source).read_bytes().splitlines()
        kind = draw.weighted({"whole": 10, "some": 6, "bad records": 8, "unknown id": 2,
                              "csv": 3, "broken csv": 2, "empty": 1, "blank": 1, "binary": 1,
                              "missing": 1, "folder": 1})
        rows, newline = None, draw.choice([b"\n", b"\r\n"])
        if kind == "whole":
            path.write_bytes(newline.join(lines) + newline)
            rows = len(lines)
        elif kind in ("some", "bad records"):
            chosen = draw.random.choices(lines, k=draw.random.randint(0, len(lines)))
            rows = len(chosen)
            if kind == "bad records":
                bad = draw.random.sample(sorted(BAD_RECORDS), draw.random.randint(1, 3))
                for label in bad:
                    chosen.insert(draw.random.randint(0, len(chosen)), BAD_RECORDS[label])
                kind += f" ({', '.join(bad)})"
            path.write_bytes(newline.join(chosen) + draw.choice([newline, b""]))
        elif kind == "unknown id":
            path.write_bytes(b"\n".join(lines + [b'{"id": "nowhere", "text": "x"}']) + b"\n")
        elif kind in ("csv", "broken csv"):
            path = path.with_suffix(".csv")
            if kind == "csv":
                shutil.copy(self.base / Path(source).with_suffix(".csv"), path)
                rows = len(lines)
            else:
                broken = draw.choice(BROKEN_CSV)
                path.write_bytes(BROKEN_CSV[broken])
                kind += f" ({broken})"
        elif kind in ("empty", "blank"):
            path.write_bytes(b"" if kind == "empty" else b"\n  \n\t\n")
            rows = 0
        elif kind == "binary":
            path.write_bytes(draw.random.randbytes(draw.random.randint(1, 300)))
        elif kind == "folder":
            path.mkdir()
        return self._input(path, f"{path.name}: {kind}"), rows

    def image_manifest(self) -> str:
        draw, path = self.draw, self.folder / "images.jsonl"
        records = [json.loads(line)
                   for line in (self.base / "images.jsonl").read_text().splitlines()]
        kind = draw.weighted({"good": 4, "truncated image": 1, "missing image": 1,
                              "bad records": 1, "empty": 1})
        if kind == "truncated image":
            truncated = self.folder / "truncated.png"
            truncated.write_bytes(Path(records[0]["image"]).read_bytes()[:40])
            records[0]["image"] = str(truncated)
        elif kind == "missing image":
            records[-1]["image"] = str(self.folder / "gone.png")
        lines = [json.dumps(record).encode() for record in records] if kind != "empty" else []
        if kind == "bad records":
            bad = draw.choice(BAD_RECORDS)
            lines.insert(draw.random.randint(0, len(lines)), BAD_RECORDS[bad])
            kind += f" ({bad})"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return self._input(path, f"{path.name}: {kind}")

    def image_folder(self) -> str:
        draw, path = self.draw, self.folder / "images"
        kind = draw.weighted({"good": 5, "missing": 1, "file": 1, "empty": 1, "no classes": 1,
                              "dangling link": 1, "odd names": 2, "not images": 1})
        if kind == "file":
            path.write_bytes(b"not a folder\n")
        elif kind in ("empty", "no classes"):
            path.mkdir()
            if kind == "no classes":
                for image in (self.base / "images").rglob("*.png"):
                    shutil.copy(image, path / image.name)
        elif kind != "missing":
            shutil.copytree(self.base / "images", path)
            if kind == "dangling link":
                os.symlink(path / "nowhere.png", path / "cat" / "gone.png")
            elif kind == "odd names":
                image = (self.base / "images" / "cat" / "0.png").read_bytes()
                for name in (b"caf\xe9.png", "naïve ✓.png".encode(), b" space .PNG",
                             b"new\nline.png"):  # a latin-1 name decodes to lone surrogates
                    (path / "dog" / os.fsdecode(name)).write_bytes(image)
            elif kind == "not images":
                (path / "cat" / "notes.txt").write_text("not an image\n")
                (path / "dog" / ".hidden.png").write_bytes(b"")
        return self._input(path, f"image folder: {kind}")

    def checkpoint(self) -> str:
        draw, path = self.draw, self.folder / "checkpoint"
        kind = draw.weighted({"text": 6, "pq": 4, "tags": 2, "damaged": 6, "missing": 1,
                              "file": 1})
        if kind == "file":
            path.write_bytes(b"not a checkpoint\n")
        elif kind != "missing":
            shutil.copytree(self.base / (kind if kind != "damaged"
                                         else draw.choice(["text", "pq", "tags"])), path)
            if kind == "damaged":
                kind = self.damage(path)
        return self._input(path, f"checkpoint: {kind}")

    def store(self) -> str:
        draw, path = self.draw, self.folder / "store"
        kind = draw.weighted({"good": 14, "damaged": 4, "missing": 1, "file": 1})
        if kind == "file":
            path.write_bytes(b"not a store\n")
        elif kind != "missing":
            shutil.copytree(self.base / "store", path)
            if kind == "damaged":
                kind = self.damage(path)
        return self._input(path, f"store: {kind}")

    def _input(self, path: Path, note: str) -> str:
        """Registers ``path`` as an input of the case (a run must leave it as it was; an output
        may be pointed at it, which the command must refuse), with ``note`` saying what was made
        of it."""
        self.notes.append(note)
        self.inputs.append(path)
        return str(path)

    def damage(self, folder: Path) -> str:
        """Break one file of ``folder``: cut short, garbage, empty, gone or, for JSON, one value
        of another kind (or one key gone); returns what was done."""
        draw = self.draw
        target = draw.choice(sorted(path for path in folder.rglob("*")
                                    if path.is_file() and path.name != LOCK_FILE))
        data = target.read_bytes()
        how = draw.weighted({"cut short": 3, "garbage": 1, "empty": 1, "gone": 1,
                             "edited": 6 if target.suffix == ".json" else 0})
        if how == "cut short":
            length = draw.random.randrange(max(len(data), 1))
            target.write_bytes(data[:length])
            how = f"cut to {length} bytes"
        elif how == "garbage":
            target.write_bytes(draw.random.randbytes(max(len(data), 16)))
        elif how == "empty":
            target.write_bytes(b"")
        elif how == "gone":
            target.unlink()
        else:
            document, how = _edited_json(draw, json.loads(data))
            target.write_text(json.dumps(document))
        return f"{target.relative_to(folder)} {how}"

    def thresholds(self) -> str:
        path = self.folder / "thresholds.json"
        content = self.draw.choice([
            b'{"c0": 0.3}', b'{"c1": 0.9, "c2": 0}', b'{"zz": 0.5}', b'{"c0": "abc"}',
            b'{"c0": null}', b'{"c0": NaN}', b'{"c0": [1]}', b'[0.5]', b'0.5', b'{"c0": ', b'',
            b'\xff\xfe', b'{"c0": 1e999}', None])
        if content is not None:
            path.write_bytes(content)
        return self._input(path, f"thresholds: {content!r}")

    def output(self, name: str) -> str:
        """A file to write: new, an earlier output (may be replaced on success), one of the
        inputs (must never be), the path of another output, a folder, or in folders still to
        make."""
        draw, path = self.draw, self.folder / name
        taken = {"an input": [p for p in self.inputs if p.is_file()],
                 "another output": [p for p in self.outputs if not p.is_dir()]}
        kind = draw.weighted({"new": 8, "existing": 3, "an input": 2, "another output": 1,
                              "a folder": 1, "nested": 1})
        if kind == "existing":
            path.write_bytes(b"an earlier output\n")
        elif kind in taken and taken[kind]:
            path = draw.choice(taken[kind])
        elif kind == "a folder":
            path.mkdir()
        elif kind == "nested":
            path = self.folder / "new" / "sub" / name
        else:
            kind = "new"
        return self._output(path, name, kind)

    def output_folder(self, name: str) -> str:
        draw, path = self.draw, self.folder / name
        folders = [p for p in self.inputs if p.is_dir()]
        kind = draw.weighted({"new": 6, "a checkpoint": 3, "a file": 1, "an input": 1,
                              "nested": 1})
        if kind == "a checkpoint":
            shutil.copytree(self.base / "text", path)
        elif kind == "a file":
            path.write_bytes(b"a file\n")
        elif kind == "an input" and folders:
            path = draw.choice(folders)
        elif kind == "nested":
            path = self.folder / "new" / "sub" / name
        else:
            kind = "new"
        return self._output(path, name, kind)

    def _output(self, path: Path, name: str, kind: str) -> str:
        if kind != "new":
            self.notes.append(f"{name}: {kind}")
        self.outputs.append(path)
        return str(path)

    def killed_run(self, output: Path, kind: str | None = None) -> None:
        """What a classify killed while writing ``output`` left: its temporary (named for a pid
        past Linux's largest, so never running) with complete rows of this input or another, a
        cut last row, garbage or nothing: what --resume continues, or any run removes."""
        kind = kind or self.draw.choice(["this input's rows", "another input's rows", "garbage",
                                         "nothing"])
        as_csv = output.suffix.lower() == ".csv"
        prefix = "i" if kind == "this input's rows" else "elsewhere"  # the base's ids are i<n>
        ids = [f"{prefix}{n}" for n in range(self.draw.random.randint(1, 20))]
        rows = "".join(f"{id},c0,0.5\n" if as_csv else json.dumps(
            {"id": id, "labels": ["c0"], "scores": [0.5]}) + "\n" for id in ids)
        content = {"garbage": self.draw.random.randbytes(64), "nothing": b""}.get(
            kind, (("id,labels,scores\n" if as_csv else "") + rows).encode())
        if self.draw.chance(0.3):
            content = content[:-self.draw.random.randint(1, 5)]  # killed inside a row
        temporary = output.parent / f".{output.name}.{KILLED_PID}.killed.tmp"
        temporary.write_bytes(content)
        self.notes.append(f"a killed run's {output.name}: {kind}")
        self.outputs.append(temporary)

    def number(self, valid, huge: bool = True) -> str:
        """Mostly one of ``valid``; else a broken number, huge only where ``huge`` is safe."""
        if self.draw.chance(0.8):
            return str(self.draw.choice(valid))
        return self.draw.choice(BROKEN_NUMBERS + ([HUGE_NUMBER] if huge else []))

    def options(self, table: dict, chance: float = 0.3) -> list[str]:
        """Some of ``table``'s flags (flag -> (valid values, huge is safe)) with numbers."""
        argv = []
        for flag, (valid, huge) in table.items():
            if self.draw.chance(chance):
                argv += [flag, self.number(valid, huge)]
        return argv

    def switches(self, table: dict) -> list[str]:
        """Some of ``table``'s switches (switch -> chance)."""
        return [switch for switch, chance in table.items() if self.draw.chance(chance)]


def _edited_json(draw: Draw, document):
    """``document`` with one value (or all of it) replaced by one of another kind, or one key or
    item removed; and what was done."""
    places = [()]

    def walk(value, place):
        children = (value.items() if isinstance(value, dict)
                    else enumerate(value) if isinstance(value, list) else ())
        for key, child in children:
            places.append((*place, key))
            walk(child, (*place, key))
    walk(document, ())
    place, oddity = draw.choice(places), copy.deepcopy(draw.choice(JSON_ODDITIES))
    if not place:
        return oddity, f"edited to {oddity!r}"
    parent = document
    for key in place[:-1]:
        parent = parent[key]
    if draw.chance(0.3):
        del parent[place[-1]]
        return document, f"without {list(place)}"
    parent[place[-1]] = oddity
    return document, f"{list(place)} = {oddity!r}"


def _classify_argv(files: CaseFolder) -> list[str]:
    draw = files.draw
    manifest, files.rows = files.manifest()
    argv = ["classify", "--checkpoint", files.checkpoint(), "--input", manifest]
    if draw.chance(0.9):
        argv += ["--store", files.store()]
    if draw.chance(0.15):
        argv += ["--thresholds", files.thresholds()]
    output = Path(files.output(draw.choice(["out.jsonl", "out.csv", "out.CSV", "out"])))
    if draw.chance(0.25) and output.parent.is_dir() and not output.is_dir() and (
            output not in files.inputs):
        files.killed_run(output)
    argv += ["--output", str(output)]
    argv += files.options({"--top-k": ([1, 2, 5, 100], True), "--threshold": ([0, 0.25, 1], True),
                           "--batch-size": ([1, 2, 7, 1024], True)})
    argv += files.switches({"--skip-bad": 0.4, "--resume": 0.3, "--quiet": 0.8})
    if "--resume" in argv:
        files.rows = None  # the output also holds the rows a killed run wrote
    return argv


def _eval_argv(files: CaseFolder) -> list[str]:
    draw = files.draw
    argv = ["eval", "--checkpoint", files.checkpoint(), "--input", files.manifest()[0]]
    if draw.chance(0.9):
        argv += ["--store", files.store()]
    if draw.chance(0.3):
        argv += ["--confusion", files.output(draw.choice(["confusion.csv", "confusion"]))]
    if draw.chance(0.08):  # matplotlib takes a second
        argv += ["--plot", files.output(draw.choice(["f1.png", "f1.svg", "f1.txt"]))]
    return argv + files.switches({"--json": 0.4, "--per-class": 0.4})


def _train_argv(files: CaseFolder) -> list[str]:
    draw = files.draw
    manifest, _ = files.manifest("train.jsonl", draw.choice(["items.jsonl", "tags.jsonl"]))
    argv = ["train", "--train", manifest, "--store", files.store(),
            "--out", files.output_folder("trained"),
            "--model", draw.weighted({"text": 6, "pq": 3, "rspq": 2, "continuous": 1,
                                      "additive": 1, "max": 0.5, "gated": 0.5, "bilinear": 0.5,
                                      "bilinear_gated": 0.5}),
            "--epochs", files.number([1, 2], huge=False)]
    # a huge size or count would allocate or run for ever (a known bug: huge-buckets)
    argv += files.options({
        "--dim": ([1, 2, 8], False), "--lr": ([0.05, 0.5, 2], True),
        "--batch-size": ([1, 4, 64], True), "--alpha": ([0, 0.5, 1], True),
        "--ngrams": ([1, 2], False), "--buckets": ([1, 10, 1000], False),
        "--subvectors": ([1, 2, 4], True), "--centroids": ([2, 4, 8], False),
        "--repetitions": ([1, 2], False), "--patience": ([1, 2], True),
        "--weight-decay": ([0, 0.01], True), "--seed": ([0, 1, 2**31], True),
        "--valid-fraction": ([0, 0.1, 0.5], True)}, chance=0.15)
    if draw.chance(0.1):
        argv += ["--valid", files.manifest("valid.jsonl")[0]]
    if draw.chance(0.1):
        argv += ["--gate", draw.choice(["text", "image", "both"])]
    if draw.chance(0.04):
        argv += ["--autotune", "--autotune-duration", files.number([0.3], huge=False)]
    return argv + files.switches({"--multilabel": 0.1, "--quiet": 0.8})


def _manifest_argv(files: CaseFolder) -> list[str]:
    argv = ["manifest", "--image-folder", files.image_folder(),
            "--out", files.output("all.jsonl")]
    if files.draw.chance(0.5):
        argv += ["--heldout", files.output("heldout.jsonl")]
    return argv + files.options({"--heldout-fraction": ([0, 0.2, 0.5, 0.9], True),
                                 "--seed": ([0, 3, -2], True)}, chance=0.4)


def _features_argv(files: CaseFolder) -> list[str]:
    draw = files.draw
    weights = draw.weighted({"none": 8, "garbage": 1, "missing": 1})
    if weights != "none":
        files.notes.append(f"weights: {weights}")
        path = files.folder / "weights.pt"
        if weights == "garbage":
            path.write_bytes(draw.random.randbytes(100))
            files.inputs.append(path)
        weights = str(path)
    return ["features", "--manifest", files.image_manifest(),
            "--store", files.output_folder("features"),
            "--backbone", draw.weighted({"resnet18": 8, "nosuch": 1}), "--weights", weights,
            "--image-size", files.number([32, 40], huge=False),
            *files.options({"--batch-size": ([1, 2, 64], True)}),
            *files.switches({"--skip-bad": 0.4, "--quiet": 0.8})]


def _demo_argv(files: CaseFolder) -> list[str]:
    """The PQ demo, small: every size is tiny or broken (a huge one would allocate)."""
    argv = ["demo", "--pq"]
    for flag, valid in (("--num-vectors", [60, 120]), ("--num-train", [20, 40]),
                        ("--dim", [4, 8]), ("--subvectors", [1, 2, 4]), ("--centroids", [2, 4]),
                        ("--repetitions", [1, 2]), ("--iters", [1, 2])):
        argv += [flag, files.number(valid, huge=False)]
    return argv


def _usage_argv(files: CaseFolder) -> list[str]:
    return files.draw.choice([
        [], ["--version"], ["--help"], ["nosuch"], ["info"], ["info", "--json"],
        ["info", "--bogus"], ["info", "extra"], ["train"], ["classify", "--top-k"],
        ["eval", "--checkpoint"], ["manifest", "--help"], ["demo", "--pq", "--dim"]])


# Command -> (weight, argv maker); the demo runs only with --pq (the real one trains nine models).
COMMANDS = {"classify": (28, _classify_argv), "eval": (22, _eval_argv), "train": (24, _train_argv),
            "manifest": (8, _manifest_argv), "features": (3, _features_argv),
            "demo": (3, _demo_argv), "usage": (6, _usage_argv)}


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder``: a file's bytes, a link's target, or FOLDER."""
    found = {}
    for root, folders, names in os.walk(folder):
        for name in folders + names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[relative] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[relative] = FOLDER
            else:
                with open(path, "rb") as handle:
                    found[relative] = handle.read()
    return found


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _file_problems(files: CaseFolder, succeeded: bool, before: dict, after: dict) -> list[str]:
    """Inputs never change; outputs change only on success; nothing else is written, and no
    temporary is left behind."""
    def under(path: str, roots: list[Path]) -> bool:
        relatives = [os.path.relpath(root, files.folder) for root in roots]
        return any(path == root or path.startswith(root + os.sep) for root in relatives)
    problems = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        name = os.path.basename(path)
        if old is None and new is not None and name.startswith(".") and name.endswith(".tmp"):
            problems.append(f"left the temporary {path}")
        if old == new or name == LOCK_FILE or (old is None and new == FOLDER):
            continue  # a lock, or a folder made for an output
        done = "removed" if new is None else "wrote" if old is None else "changed"
        if old is not None and under(path, files.inputs):
            problems.append(f"{done} its input {path}")
        elif not succeeded:
            problems.append(f"failed but {done} {path}")
        elif not under(path, files.outputs):
            problems.append(f"{done} {path}, which is no output")
    return problems


def _success_problems(argv: list[str], stdout: str, rows: int | None) -> list[str]:
    """What a command that succeeded wrote holds what it reports."""
    command, problems = argv[0] if argv and "--help" not in argv else None, []
    if command == "classify" and rows is not None:
        output = Path(_flag(argv, "--output"))
        written = len(output.read_text(encoding="utf-8").splitlines())
        written -= output.suffix.lower() == ".csv"  # the header
        if written != rows:
            problems.append(f"wrote {written} predictions for {rows} good records")
    elif command == "train":
        out = _flag(argv, "--out")
        try:
            load_checkpoint(out)
        except Exception as error:  # any: a checkpoint train just wrote must load
            problems.append(f"wrote a checkpoint that does not load: {_said(error)}")
        else:
            broken = [name for name, tensor in load_file(f"{out}/model.safetensors").items()
                      if not bool(tensor.isfinite().all())]
            if broken:
                problems.append(f"saved non-finite weights: {broken}")
    elif command == "manifest":
        reported = int(re.match(r"(\d+) records", stdout).group(1))
        written = sum(len(read_manifest(path)) for path in
                      (_flag(argv, "--out"), _flag(argv, "--heldout")) if path)
        if written != reported:
            problems.append(f"reported {reported} records but wrote {written}")
    elif command == "eval":
        confusion, plot = _flag(argv, "--confusion"), _flag(argv, "--plot")
        if confusion and not Path(confusion).read_text().startswith("true\\predicted,"):
            problems.append(f"{confusion} holds no confusion matrix")
        if plot and Path(plot).suffix == ".png" and not Path(plot).read_bytes().startswith(
                b"\x89PNG"):
            problems.append(f"{plot} is no PNG")
    elif command == "features":
        reported = int(re.match(r"(\d+) items", stdout).group(1))
        if len(FeatureStore(_flag(argv, "--store"))) != reported:
            problems.append(f"reported {reported} items, the store holds another count")
    return problems


def _shown_lines(stderr: str) -> list[str]:
    """The non-blank lines a terminal would show: a progress bar redraws over its line."""
    return [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")
            if line.rsplit("\r", 1)[-1].strip()]


def _command_problems(files, argv, status, stdout, stderr, before) -> list[str]:
    problems = []
    if status not in (0, 1, 2):
        problems.append(f"exit status {status}: {stderr[-500:]!r}")
    if "Traceback" in stderr:
        problems.append(f"a traceback: {stderr.strip().splitlines()[-1]!r}")
    elif status in (1, 2):
        shown = _shown_lines(stderr)
        if len(shown) != 1 or not shown[0].startswith("mmfast"):
            problems.append(f"stderr is not one line starting with 'mmfast': {stderr[-500:]!r}")
    problems += _file_problems(files, status == 0, before, _snapshot(files.folder))
    if status == 0 and not problems:
        problems += _success_problems(argv, stdout, files.rows)
    return problems


def _run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``mmfast argv`` run by ``main`` here, as ``python -m mmfast.cli`` would: its exit status,
    stdout and stderr (with the traceback the interpreter would print)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            warnings.catch_warnings():
        warnings.simplefilter("default")  # each warning once per case, as in a fresh process
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        except Exception:  # uncaught: what the interpreter does
            traceback.print_exc()
            status = 1
    return status, stdout.getvalue(), stderr.getvalue()


def _run_as_process(argv: list[str]) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "mmfast.cli", *argv], capture_output=True,
                            timeout=CASE_TIMEOUT_S)
    return (result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"))


def _prepare_base(base: Path) -> None:
    """What command cases copy (made once per work folder): 30 items as JSONL and CSV, a
    multi-label variant, their feature store, checkpoints of a text, a PQ and a multi-label
    model, and four tiny images with their manifest."""
    if (base / "ready").exists():
        return
    records = [Record(f"i{n}", "", f"word{n % 3} other{n % 5}", (f"c{n % 3}",))
               for n in range(30)]
    write_manifest(base / "items.jsonl", records)
    write_manifest(base / "items.csv", records)
    tagged = [Record(r.id, "", r.text, (*r.labels, f"t{n % 2}")) for n, r in enumerate(records)]
    write_manifest(base / "tags.jsonl", tagged)
    write_manifest(base / "tags.csv", tagged)
    FeatureStore.write(base / "store", [r.id for r in records],
                       {"image": np.random.default_rng(0).random((30, 4), dtype=np.float32)})
    for name, manifest, flags in (("text", "items.jsonl", ["--model", "text"]),
                                  ("pq", "items.jsonl", ["--model", "pq", "--subvectors", "2",
                                                         "--centroids", "4"]),
                                  ("tags", "tags.jsonl", ["--model", "text"])):
        status, _, stderr = _run_in_process(
            ["train", "--train", str(base / manifest), "--store", str(base / "store"), "--out",
             str(base / name), "--epochs", "1", "--quiet", *flags])
        assert status == 0, stderr
    images = []
    for n, label in enumerate(("cat", "cat", "dog", "dog")):
        path = base / "images" / label / f"{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * n, 100, 200)).save(path)
        images.append(Record(f"img{n}", str(path), f"a {label}", (label,)))
    write_manifest(base / "images.jsonl", images)
    (base / "ready").touch()


def _run_checked(files: CaseFolder, argv: list[str], runner) -> list[str]:
    before = _snapshot(files.folder)
    status, stdout, stderr = runner(argv)
    return _command_problems(files, argv, status, stdout, stderr, before)


def _prepare_command_case(mode: str, seed: int, workdir: Path, index: int):
    """(description, run) of one command case, its files made in its own folder; ``run``
    returns its problems (and removes the folder of a case that has none)."""
    base, folder = workdir / "base", workdir / f"{mode}-{index}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    draw = Draw(f"cli:{mode}:{seed}:{index}")
    files = CaseFolder(draw, base, folder)
    argv = COMMANDS[draw.weighted({name: weight for name, (weight, _) in COMMANDS.items()})][1](
        files)
    description = " ".join(["mmfast", shlex.join(argv), *(f"[{note}]" for note in files.notes)])

    def run() -> list[str]:
        problems = _run_checked(files, argv,
                                _run_in_process if mode == "in-process" else _run_as_process)
        if not problems:
            shutil.rmtree(folder)
        return problems
    return description.replace(str(folder), "<case>").replace(str(base), "<base>"), run


# ---- known bugs

@dataclass(frozen=True)
class KnownBug:
    """A class of cases mmfast got wrong. While it is open, the fuzz still runs its cases (a
    crash would count) but passes over their problems that match ``problem``, and
    test_known_*_bugs holds its minimal reproducer to xfail(strict=True), which fails once the
    bug is fixed: then set ``fixed``, and the reproducer becomes a regression test."""

    name: str
    reason: str
    # ops: () -> a fresh OpCase; commands: (CaseFolder) -> argv, its files written
    reproduce: Callable
    problem: str  # a regular expression: the problems this bug explains
    # does a fuzz case (an OpCase; a command's description) fall in the class? None: the fuzz
    # never makes one (it would allocate too much memory)
    applies: Callable | None = None
    fixed: bool = False


def _known(bugs: list[KnownBug], case, problems: list[str]) -> tuple[list[str], list[str]]:
    """(the problems no known bug explains, the problems one does) of a fuzz case."""
    patterns = [bug.problem for bug in bugs
                if not bug.fixed and bug.applies and bug.applies(case)]
    known = [problem for problem in problems
             if any(re.search(pattern, problem) for pattern in patterns)]
    return [problem for problem in problems if problem not in known], known


def _known_op_case(op: str, expect: str, grad: bool = False, **inputs) -> Callable[[], OpCase]:
    return lambda: OpCase(op, copy.deepcopy(inputs), expect, "", grad)


def _nonfinite_in_wordless_item(case: OpCase) -> bool:
    V, T, lengths = (case.inputs.get(name) for name in ("V", "T", "t_lengths"))
    if not (isinstance(V, torch.Tensor) and isinstance(T, torch.Tensor) and V.dim() == T.dim() == 3
            and V.is_floating_point()):
        return False
    if lengths is None:
        wordless = torch.full(V.shape[:1], T.shape[1] == 0)
    elif isinstance(lengths, torch.Tensor) and lengths.shape == V.shape[:1]:
        wordless = lengths == 0
    else:
        return False
    return bool((~V.isfinite().flatten(1).all(1) & wordless).any())


def _nonfinite_outside_perm(case: OpCase) -> bool:
    x, perm = case.inputs.get("x"), case.inputs.get("perm")
    if not (isinstance(x, torch.Tensor) and isinstance(perm, torch.Tensor) and x.dim() == 2
            and x.is_floating_point() and perm.dtype == torch.int64):
        return False
    unused = torch.ones(x.shape[1], dtype=torch.bool)
    unused[perm[(perm >= 0) & (perm < x.shape[1])]] = False
    return bool((~x.isfinite()[:, unused]).any())


def _width_one(case: OpCase) -> bool:
    V = case.inputs.get("V") if case.op == "cross_attention_cosine" else None
    return isinstance(V, torch.Tensor) and V.shape[-1:] == (1,) and V.dtype != torch.float64


def _nonfinite_param_under_relu(case: OpCase) -> bool:
    params = case.inputs.get("params") if case.op == "cacnet_forward" else None
    return case.inputs.get("activation") == "relu" and isinstance(params, (list, tuple)) and any(
        isinstance(p, torch.Tensor) and p.is_floating_point() and not bool(p.isfinite().all())
        for p in params)


def _known_tensors(name: str, *shapes) -> list[torch.Tensor]:
    draw = Draw(name)
    return [draw.floats(shape) for shape in shapes]


_V, _T = _known_tensors("known: wordless", (2, 3, 2), (2, 3, 2))
_X, _CODEBOOKS = _known_tensors("known: perm", (2, 4), (2, 16, 2))
_X_IMG, _X_TXT, *_PARAMS = _known_tensors("known: relu", (4, 3), (4, 3),
                                          *param_shapes(3, 3, 2, 2).values())
KNOWN_OP_BUGS = [
    KnownBug(
        "wordless-item",
        "cross_attention_cosine: a NaN or infinity in V goes unnoticed in an item without valid "
        "words (t_lengths[b] = 0, or N = 0): the kernel skips the item before its finite check "
        "and returns 0s; the reference refuses the input",
        _known_op_case("cross_attention_cosine", "error", V=_with_value(_V, (1, 1, 1), math.nan),
                       T=_T, t_lengths=torch.tensor([3, 0]), scale=1.0),
        "the fused backend returned; the reference raised", _nonfinite_in_wordless_item,
        fixed=True),
    KnownBug(
        "width-1",
        "cross_attention_cosine: at d = 1 (every cosine is +-1, so every gradient is 0) the "
        "fused float32 and half gradients of V were off by up to ~0.2 where an attended vector "
        "nearly cancels (the cosine's gradient divides by its norm); the reference's are 0. "
        "P diag(alpha') T + M V rounded apart; the kernels now take P Z with Z formed elementwise",
        _known_op_case("cross_attention_cosine", "result", grad=True,
                       **dict(zip(("V", "T"), _known_tensors("known: d=1", (4, 8, 1), (4, 32, 1)))),
                       t_lengths=None, scale=1.0),
        r"(v_bar|t_bar|grad [VT]) is off by", _width_one, fixed=True),
    KnownBug(
        "column-outside-perm",
        "pq_encode: a NaN or infinity of x in a column no row of perm selects goes unnoticed "
        "(the kernel checks the permuted subvectors); the reference refuses the row",
        _known_op_case("pq_encode", "error", x=_with_value(_X, (1, 0), math.inf),
                       codebooks=_CODEBOOKS, perm=torch.tensor([[1, 1, 2, 3]])),
        "the fused backend returned; the reference raised", _nonfinite_outside_perm, fixed=True),
    KnownBug(
        "learning-rate-type",
        "fasttext_sgd_: a learning rate that is not a number (a str, None) raises math.isfinite's "
        "TypeError 'must be real number, not str', which does not name the op",
        _known_op_case("fasttext_sgd_", "error", embedding=torch.zeros(4, 2),
                       weight=torch.zeros(2, 2), bias=None, indices=torch.tensor([1, 2]),
                       offsets=torch.tensor([0, 2]), per_sample_weights=None,
                       labels=torch.tensor([1]), lr_start="0.1", lr_end=0.0, threads=1),
        "must be real number",
        lambda case: case.op == "fasttext_sgd_" and any(
            not isinstance(case.inputs[name], (numbers.Real, torch.Tensor))
            for name in ("lr_start", "lr_end")), fixed=True),
    KnownBug(
        "relu-drops-nan",
        "cacnet_forward: with activation='relu' the fused kernel turns a NaN reaching a unit into "
        "0 (torch.relu keeps it), so NaN or infinite parameters give finite logits where the "
        "reference's are NaN: a diverged model looks healthy",
        _known_op_case("cacnet_forward", "either", x_img=_X_IMG, x_txt=_X_TXT,
                       params=[_with_value(p, 0, math.nan) if name == "b_gt" else p
                               for name, p in zip(PARAM_NAMES, _PARAMS)], activation="relu"),
        "logits is not finite where the references are", _nonfinite_param_under_relu, fixed=True),
]


def _input_file(files: CaseFolder, name: str, content: bytes) -> str:
    path = files.folder / name
    path.write_bytes(content)
    files.inputs.append(path)
    return str(path)


def _eval_of(files: CaseFolder, manifest: str, checkpoint: str = "text",
             store: str | None = None) -> list[str]:
    return ["eval", "--checkpoint", str(files.base / checkpoint), "--input", manifest,
            "--store", store or str(files.base / "store")]


def _broken_copy(files: CaseFolder, source: str, target: str) -> str:
    """A copy of the base's ``source`` folder whose file ``target`` is empty."""
    folder = files.folder / source
    shutil.copytree(files.base / source, folder)
    (folder / target).write_bytes(b"")
    files.inputs.append(folder)
    return str(folder)


def _manifest_over_a_folder(files: CaseFolder) -> list[str]:
    shutil.copytree(files.base / "images", files.folder / "images")
    (files.folder / "all.jsonl").write_bytes(b"an earlier output\n")
    (files.folder / "heldout.jsonl").mkdir()
    files.inputs.append(files.folder / "images")
    files.outputs += [files.folder / "all.jsonl", files.folder / "heldout.jsonl"]
    return ["manifest", "--image-folder", str(files.folder / "images"), "--out",
            str(files.folder / "all.jsonl"), "--heldout", str(files.folder / "heldout.jsonl")]


def _confusion_over_the_input(files: CaseFolder) -> list[str]:
    manifest = _input_file(files, "input.jsonl", (files.base / "items.jsonl").read_bytes())
    files.outputs.append(Path(manifest))
    return _eval_of(files, manifest) + ["--confusion", manifest]


def _confusion_then_plot(files: CaseFolder) -> list[str]:
    files.outputs += [files.folder / "confusion.csv", files.folder / "f1.txt"]
    return _eval_of(files, str(files.base / "items.jsonl")) + [
        "--confusion", str(files.folder / "confusion.csv"), "--plot", str(files.folder / "f1.txt")]


def _output_over_thresholds(files: CaseFolder) -> list[str]:
    thresholds = _input_file(files, "thresholds.json", b'{"c0": 0.3}')
    files.outputs.append(Path(thresholds))
    return ["classify", "--checkpoint", str(files.base / "text"), "--input",
            str(files.base / "items.jsonl"), "--store", str(files.base / "store"),
            "--thresholds", thresholds, "--output", thresholds]


def _resume_of_another_input(files: CaseFolder) -> list[str]:
    output = files.folder / "out.jsonl"
    files.killed_run(output, "another input's rows")
    files.outputs.append(output)
    return ["classify", "--checkpoint", str(files.base / "text"), "--input",
            str(files.base / "items.jsonl"), "--store", str(files.base / "store"),
            "--output", str(output), "--resume", "--quiet"]


def _garbage_weights(files: CaseFolder) -> list[str]:
    weights = _input_file(files, "weights.pt", Draw("known: weights").random.randbytes(100))
    return ["features", "--manifest", str(files.base / "images.jsonl"), "--store",
            str(files.folder / "features"), "--backbone", "resnet18", "--weights", weights,
            "--image-size", "32", "--quiet"]


KNOWN_COMMAND_BUGS = [
    KnownBug(
        "deeply-nested-json",
        "a manifest line nested deeper than Python's recursion limit: json's RecursionError is "
        "no user error to the command, so a traceback",
        lambda files: _eval_of(files, _input_file(files, "deep.jsonl",
                                                   BAD_RECORDS["deeply nested"] + b"\n")),
        "RecursionError", lambda description: "deeply nested" in description, fixed=True),
    KnownBug(
        "giant-csv-field",
        "a CSV manifest field over csv.field_size_limit() (131072 characters): _csv.Error is no "
        "user error to the command, so a traceback",
        lambda files: _eval_of(files, _input_file(files, "giant.csv", BROKEN_CSV["giant field"])),
        "_csv.Error", lambda description: "broken csv (giant field)" in description, fixed=True),
    KnownBug(
        "empty-feature-file",
        "a feature store whose .npy file is empty: numpy's EOFError is no user error to the "
        "command, so a traceback",
        lambda files: _eval_of(files, str(files.base / "items.jsonl"),
                               store=_broken_copy(files, "store", "image.npy")),
        "EOFError", lambda description: "[store: image.npy" in description, fixed=True),
    KnownBug(
        "unreadable-quantizer",
        "a PQ checkpoint whose quantizer/quantizer.safetensors is cut short, empty or garbage, "
        "or whose quantizer/config.json is not a JSON object: ProductQuantizer.load lets "
        "safetensors' SafetensorError (load_tensors would name the file) or an AttributeError "
        "through, so a traceback",
        lambda files: _eval_of(files, str(files.base / "items.jsonl"), checkpoint=_broken_copy(
            files, "pq", "quantizer/quantizer.safetensors")),
        "SafetensorError|AttributeError",
        lambda description: "[checkpoint: quantizer/" in description, fixed=True),
    KnownBug(
        "unreadable-weights",
        "mmfast features --weights naming a file torch.load cannot read: its UnpicklingError is "
        "no user error to the command, so a traceback",
        _garbage_weights, "a traceback", lambda description: "[weights: garbage]" in description,
        fixed=True),
    KnownBug(
        "manifest-half-written",
        "mmfast manifest writes --out before --heldout; when --heldout then fails (a folder), "
        "it exits 1 with --out already created or replaced",
        _manifest_over_a_folder, r"failed but (wrote|changed) all\.jsonl",
        lambda description: description.startswith("mmfast manifest"), fixed=True),
    KnownBug(
        "confusion-over-input",
        "mmfast eval --confusion naming the --input manifest replaces the manifest with the "
        "matrix and exits 0 (classify refuses --output == --input; eval has no such check)",
        _confusion_over_the_input, r"changed its input",
        lambda description: description.startswith("mmfast eval"), fixed=True),
    KnownBug(
        "confusion-then-plot",
        "mmfast eval writes --confusion before --plot: a --plot that then fails (a .txt "
        "suffix) leaves the matrix written with exit status 1, and a --plot at the same path "
        "replaces it",
        _confusion_then_plot,
        r"failed but (wrote|changed) \S*confusion|holds no confusion matrix",
        lambda description: description.startswith("mmfast eval"), fixed=True),
    KnownBug(
        "output-over-thresholds",
        "mmfast classify --output naming the --thresholds file replaces it with the "
        "predictions and exits 0 (only --output == --input is refused)",
        _output_over_thresholds, r"changed its input thresholds\.json",
        lambda description: description.startswith("mmfast classify"), fixed=True),
    KnownBug(
        "failed-run-drops-killed-output",
        "mmfast classify removes the unfinished output a killed run left (what --resume "
        "continues) as it starts, so a run that then fails loses it: with --resume, the "
        "interrupted rows are gone (e.g. after 'it is not this input's')",
        _resume_of_another_input, r"failed but removed \S*\.tmp",
        lambda description: "a killed run's" in description, fixed=True),
    KnownBug(
        "negative-demo-size",
        "mmfast demo --pq checks neither --num-vectors nor --num-train for a sign: "
        "--num-vectors -5 is torch's RuntimeError, no user error to the command, so a "
        "traceback; a hugely negative --num-train prints torch's slice warning before the error",
        lambda files: ["demo", "--pq", "--num-vectors", "-5", "--num-train", "-10", "--dim", "4",
                       "--subvectors", "2", "--centroids", "2", "--iters", "1"],
        "RuntimeError|stderr is not one line",
        lambda description: re.match(r"mmfast demo --pq --num-vectors (-|\S+ --num-train -)",
                                     description), fixed=True),
    KnownBug(
        "huge-buckets",
        "mmfast train --ngrams 2 --buckets 10000000000000: the failed allocation of the n-gram "
        "embedding is a RuntimeError, no user error to the command, so a traceback",
        lambda files: ["train", "--train", str(files.base / "items.jsonl"), "--store",
                       str(files.base / "store"), "--out", str(files.folder / "trained"),
                       "--model", "text", "--epochs", "1", "--ngrams", "2", "--buckets",
                       "10000000000000", "--quiet"],
        "RuntimeError", fixed=True),
]


# ---- child processes

def _child(arguments: list[str]) -> None:
    """Run cases ``first .. first + count - 1`` of ``ops <op> <seed>`` or ``cli <mode> <seed>
    <folder>``, printing each case (flushed) before it runs and its problems after."""
    os.environ.pop("MMFAST_DEBUG", None)  # it would make every user error a traceback
    kind, first, count = arguments[0], int(arguments[-2]), int(arguments[-1])
    if kind == "ops":
        op, seed = arguments[1], int(arguments[2])

        def prepare(index):
            make = functools.partial(_op_case, op, seed, index)
            return (make().describe(), functools.partial(_op_case_problems, make),
                    functools.partial(_known, KNOWN_OP_BUGS, make()))
    else:
        mode, seed, workdir = arguments[1], int(arguments[2]), Path(arguments[3])
        _prepare_base(workdir / "base")

        def prepare(index):
            description, run = _prepare_command_case(mode, seed, workdir, index)
            return description, run, functools.partial(_known, KNOWN_COMMAND_BUGS, description)
    faulthandler.enable()  # a crash prints the Python stack of the case that crashed
    for index in range(first, first + count):
        description, run, sort = prepare(index)
        print(json.dumps({"case": index, "description": description}), flush=True)
        faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
        problems, known = sort(run())
        faulthandler.cancel_dump_traceback_later()
        # the known ones only show when the case is rerun by itself
        print(json.dumps({"case": index, "problems": problems, "known": known}), flush=True)


def _fuzz(arguments: list[str], first: int, count: int) -> tuple[int, list[str]]:
    """Cases ``first .. first + count - 1`` in child processes: (cases run, failures). A child
    that dies is counted against the case it was running, and a new one goes on after it."""
    failures, finished, start, end = [], 0, first, first + count
    while start < end:
        result = subprocess.run([sys.executable, __file__, *arguments, str(start),
                                 str(end - start)], capture_output=True, text=True,
                                errors="replace")
        started = {}
        for line in result.stdout.splitlines():
            if not line.startswith('{"case": '):
                continue  # something the case printed at the C level
            record = json.loads(line)
            if "description" in record:
                started[record["case"]] = record["description"]
                continue
            finished += 1
            description = started.pop(record["case"])
            failures += [f"case {record['case']}: {problem}\n    in {description}"
                         for problem in record["problems"]]
        if result.returncode == 0 and not started:
            break
        if not started:
            failures.append(f"a child exited with status {result.returncode} outside any case: "
                            f"{result.stderr[-2000:]}")
            break
        crashed = min(started)
        rerun = shlex.join([sys.executable, __file__, *arguments, str(crashed), "1"])
        stack = result.stderr.split("\nExtension modules:")[0][-2000:]  # faulthandler's
        failures.append(f"case {crashed}: the child died (exit status {result.returncode})\n"
                        f"    in {started[crashed]}\n    {stack}\n    rerun: {rerun}")
        finished += 1
        start = crashed + 1
    return finished, failures


def _assert_no_failures(arguments: list[str], first: int, count: int) -> None:
    finished, failures = _fuzz(arguments, first, count)
    listed = "\n".join(failures[:25])
    rerun = shlex.join([sys.executable, __file__, *arguments])
    assert not failures, (f"{len(failures)} problems in {count} cases of "
                          f"{' '.join(arguments)} from {first}:\n{listed}\n"
                          f"rerun one case: {rerun} <case> 1")
    assert finished == count


# ---- tests

def _tiers(default: int, slow: int):
    """The first ``default`` cases in the default run; the next ``slow`` in the slow tier."""
    return [pytest.param((0, default), id="default"),
            pytest.param((default, slow), id="slow", marks=pytest.mark.slow)]


@pytest.mark.parametrize("tier", _tiers(60, 1000))
@pytest.mark.parametrize("op", sorted(OPS))
def test_ops_fuzz(op, tier):
    _assert_no_failures(["ops", op, str(SEED)], *tier)


@pytest.mark.parametrize("tier", _tiers(40, 2000))
def test_command_fuzz(tmp_path, tier):
    """Cases run by ``main`` in a child (a crash takes the rest of the batch, and the parent
    goes on after the case it died on)."""
    _assert_no_failures(["cli", "in-process", str(SEED), str(tmp_path)], *tier)


@pytest.mark.parametrize("tier", _tiers(3, 60))
def test_command_fuzz_as_processes(tmp_path, tier):
    """Cases run as ``python -m mmfast.cli``, each its own process: the exit status and stderr
    the user sees, without the in-process emulation."""
    _assert_no_failures(["cli", "process", str(SEED), str(tmp_path)], *tier)


def _reproducers(bugs: list[KnownBug]):
    """An open bug's reproducer is expected to fail by an AssertionError alone (_assert_fixed's);
    a fixed one's must pass."""
    return [pytest.param(bug, id=bug.name, marks=() if bug.fixed else pytest.mark.xfail(
        strict=True, raises=AssertionError, reason=bug.reason)) for bug in bugs]


def _assert_fixed(bug: KnownBug, problems: list[str]) -> None:
    unexplained = [problem for problem in problems if not re.search(bug.problem, problem)]
    if unexplained:  # another failure than the bug's: not an expected one
        pytest.fail(f"the reproducer of {bug.name} has other problems: {unexplained}")
    assert not problems


@pytest.mark.parametrize("bug", _reproducers(KNOWN_OP_BUGS))
def test_known_op_bugs(bug):
    _assert_fixed(bug, _op_case_problems(bug.reproduce))


@pytest.fixture(scope="module")
def command_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    _prepare_base(base)
    return base


@pytest.mark.parametrize("bug", _reproducers(KNOWN_COMMAND_BUGS))
def test_known_command_bugs(bug, command_base, tmp_path, monkeypatch):
    """Run by ``main`` in this process (none of them crashes): a second faster each."""
    monkeypatch.delenv("MMFAST_DEBUG", raising=False)
    files = CaseFolder(Draw(bug.name), command_base, tmp_path)
    argv = bug.reproduce(files)
    _assert_fixed(bug, _run_checked(files, argv, _run_in_process))


if __name__ == "__main__":
    _child(sys.argv[1:])
