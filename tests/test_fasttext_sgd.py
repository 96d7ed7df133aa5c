"""fasttext_sgd_ against its per-example reference, its training behaviour, opcheck, bad input."""

import pytest
import torch
from torch.library import opcheck

import mmfast
from mmfast import reference
from mmfast.ops import fasttext_sgd_


def _problem(batch=40, vocabulary=50, dim=20, classes=5, bias=True, weighted=False, seed=0):
    """Random bags of 0..6 ids (repeats and empty bags included) and a trained-looking state."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 7, (batch,), generator=g)
    lengths[0] = 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.randint(0, vocabulary, (int(offsets[-1]),), generator=g)
    indices[1:3] = indices[3]  # a repeated id within one bag
    params = {
        "embedding": torch.randn(vocabulary, dim, generator=g) * 0.3,
        "weight": torch.randn(classes, dim, generator=g) * 0.3,
        "bias": torch.randn(classes, generator=g) * 0.1 if bias else None,
    }
    per_sample_weights = torch.rand(indices.numel(), generator=g) if weighted else None
    labels = torch.randint(0, classes, (batch,), generator=g)
    return params, (indices, offsets, per_sample_weights, labels)


def _clone(params):
    return {name: None if p is None else p.clone() for name, p in params.items()}


def _run(params, inputs, lr=(0.5, 0.1), threads=None, order=None):
    return fasttext_sgd_(params["embedding"], params["weight"], params["bias"], *inputs, *lr,
                         threads=threads, order=order)


def _run_reference(params, inputs, lr=(0.5, 0.1), order=None):
    return reference.fasttext_sgd_(params["embedding"], params["weight"], params["bias"],
                                   *inputs, *lr, order)


def _one_vs_all(inputs, classes=5, seed=1):
    """The same bags with multi-label 0/1 targets [B, K] (rows with none, one and several)."""
    indices, offsets, per_sample_weights, labels = inputs
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(labels.shape[0], classes, generator=g) < 0.3).float()
    return indices, offsets, per_sample_weights, targets


@pytest.mark.parametrize("loss", ["softmax", "ova"])
@pytest.mark.parametrize("dim", [5, 20, 37, 100])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_single_thread_matches_reference(dim, bias, weighted, loss):
    params, inputs = _problem(dim=dim, bias=bias, weighted=weighted)
    if loss == "ova":
        inputs = _one_vs_all(inputs)
    expected = _clone(params)
    losses = _run(params, inputs, threads=1)
    expected_losses = _run_reference(expected, inputs)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-5)
    for name, value in params.items():
        if value is not None:
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "ova"])
def test_order_trains_as_the_gathered_examples(loss):
    """``order`` visits the examples in its order (repeats allowed), as the reference does and as
    the same examples gathered into a new batch train."""
    params, inputs = _problem()
    if loss == "ova":
        inputs = _one_vs_all(inputs)
    indices, offsets, _, labels = inputs
    order = torch.tensor([7, 3, 3, 0, 39, 12, 5, 21, 21, 21, 8])
    expected, gathered = _clone(params), _clone(params)
    losses = _run(params, inputs, threads=1, order=order)
    expected_losses = _run_reference(expected, inputs, order=order)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-5)
    lengths = offsets.diff()[order]
    bags = torch.cat([indices[offsets[i]:offsets[i + 1]] for i in order.tolist()])
    gathered_inputs = (bags, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
                       None, labels[order])
    torch.testing.assert_close(_run(gathered, gathered_inputs, threads=1), losses)
    for name, value in params.items():
        if value is not None:
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(value, gathered[name])


@pytest.mark.parametrize("weighted", [True, False])
def test_order_over_several_copied_blocks_trains_as_the_gathered_examples(weighted):
    """With ``order`` the kernel copies the bags of 4096 steps at a time before it trains on
    them: 9000 steps (three blocks, the last partial; bag weights copied alongside) give the
    losses and parameters of the same examples gathered into one batch and trained in turn."""
    params, inputs = _problem(weighted=weighted)
    indices, offsets, per_sample_weights, labels = inputs
    order = torch.randint(0, 40, (9000,), generator=torch.Generator().manual_seed(2))
    gathered = _clone(params)
    losses = _run(params, inputs, threads=1, order=order)
    bags = [torch.arange(offsets[i], offsets[i + 1]) for i in order.tolist()]
    lengths = torch.tensor([len(bag) for bag in bags])
    positions = torch.cat(bags)
    gathered_inputs = (indices[positions],
                       torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
                       None if per_sample_weights is None else per_sample_weights[positions],
                       labels[order])
    torch.testing.assert_close(_run(gathered, gathered_inputs, threads=1), losses)
    for name, value in params.items():
        if value is not None:
            torch.testing.assert_close(value, gathered[name])


def test_one_vs_all_loss_is_the_sum_of_binary_losses():
    """fastText's -loss ova: each example's loss sums its K binary losses (not their mean)."""
    params, inputs = _problem(classes=5)
    indices, offsets, _, targets = _one_vs_all(inputs)
    hidden = torch.nn.functional.embedding_bag(indices, params["embedding"], offsets[:-1],
                                               mode="mean")
    logits = hidden @ params["weight"].T + params["bias"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:1], targets[:1], reduction="sum")
    losses = _run(params, (indices, offsets, None, targets), lr=(0.0, 0.0), threads=1)
    torch.testing.assert_close(losses[0], expected)


def test_reference_backend_runs_the_reference():
    params, inputs = _problem()
    expected = _clone(params)
    with mmfast.backend("reference"):
        losses = _run(params, inputs)
    expected_losses = _run_reference(expected, inputs)
    torch.testing.assert_close(losses, expected_losses, rtol=0, atol=0)


def _separable(batch=4000, classes=8, words_per_class=30, seed=0):
    """Each class has its own words; every bag has 3 of its class's words and 3 shared ones."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=g)
    own = labels[:, None] * words_per_class + torch.randint(0, words_per_class, (batch, 3),
                                                            generator=g)
    shared = classes * words_per_class + torch.randint(0, 50, (batch, 3), generator=g)
    indices = torch.cat([own, shared], 1).flatten()
    offsets = torch.arange(batch + 1) * 6
    vocabulary = classes * words_per_class + 50
    params = {"embedding": (torch.rand(vocabulary, 20, generator=g) - 0.5) / 10,
              "weight": torch.zeros(classes, 20), "bias": torch.zeros(classes)}
    return params, (indices, offsets, None, labels)


def _accuracy(params, inputs):
    indices, offsets, _, labels = inputs
    hidden = torch.nn.functional.embedding_bag(indices, params["embedding"], offsets[:-1],
                                               mode="mean")
    return float(((hidden @ params["weight"].T + params["bias"]).argmax(1) == labels)
                 .float().mean())


def test_loss_decreases():
    params, inputs = _separable()
    first = _run(params, inputs, lr=(0.2, 0.1), threads=1).mean()
    last = _run(params, inputs, lr=(0.1, 0.0), threads=1).mean()
    assert last < 0.5 * first
    assert _accuracy(params, inputs) > 0.95


@pytest.mark.parametrize("threads", [2, 4])
def test_hogwild_threads_train_as_well(threads):
    accuracies = {}
    for count in (1, threads):
        params, inputs = _separable(seed=1)
        for epoch in range(3):
            _run(params, inputs, lr=(0.2 * (1 - epoch / 3), 0.2 * (1 - (epoch + 1) / 3)),
                 threads=count)
        accuracies[count] = _accuracy(params, inputs)
    assert accuracies[threads] > 0.95
    assert abs(accuracies[threads] - accuracies[1]) < 0.02


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test; ``deterministic(warn_only=
    True)`` sets the warning mode instead."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    yield lambda warn_only: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_algorithms_train_on_one_thread(deterministic, capfd):
    """Under ``torch.use_deterministic_algorithms(True)`` the default is the sequential SGD of
    the reference; asking for Hogwild threads is PyTorch's nondeterminism error, or with
    ``warn_only`` its warning (from C++, on stderr) and a run."""
    params, inputs = _problem(batch=400)
    expected = _clone(params)
    _run(params, inputs)
    _run_reference(expected, inputs)
    for name, value in params.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="fasttext_sgd_ with threads > 1 .* does not have a "
                                           "deterministic implementation"):
        _run(_clone(params), inputs, threads=2)
    deterministic(warn_only=True)
    capfd.readouterr()
    _run(_clone(params), inputs, threads=2)
    assert "fasttext_sgd_ with threads > 1 (Hogwild) does not have a deterministic" in \
        capfd.readouterr().err


def test_empty_batch_changes_nothing():
    params, _ = _problem()
    before = _clone(params)
    empty = torch.empty(0, dtype=torch.long)
    losses = _run(params, (empty, torch.zeros(1, dtype=torch.long), None, empty))
    assert losses.shape == (0,)
    for name, value in params.items():
        assert torch.equal(value, before[name])


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    # No requires_grad case: the op is a training step with no autograd by design, so
    # test_autograd_registration has nothing to check. Every other opcheck test applies: the
    # schema's (a!) annotations must match the mutations, and the fake kernel the outputs.
    params, inputs = _problem(bias=bias, weighted=True)
    opcheck(torch.ops.mmfast.fasttext_sgd_.default,
            (params["embedding"], params["weight"], params["bias"], *inputs, 0.5, 0.1, 1))
    opcheck(torch.ops.mmfast.fasttext_sgd_.default,
            (params["embedding"], params["weight"], params["bias"], *inputs, 0.5, 0.1, 1,
             torch.tensor([3, 1, 1])))


def test_torch_compile_fullgraph():
    params, inputs = _problem()
    expected = _clone(params)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(embedding, weight, bias, indices, offsets, labels):
        return fasttext_sgd_(embedding, weight, bias, indices, offsets, None, labels, 0.5, 0.1,
                             threads=1).mean()

    indices, offsets, _, labels = inputs
    loss = step(params["embedding"], params["weight"], params["bias"], indices, offsets, labels)
    expected_loss = _run(expected, inputs, threads=1).mean()
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(params["embedding"], expected["embedding"])


def _bad(change):
    params, (indices, offsets, weights, labels) = _problem(weighted=True)
    args = {"embedding": params["embedding"], "weight": params["weight"], "bias": params["bias"],
            "indices": indices, "offsets": offsets, "per_sample_weights": weights,
            "labels": labels, "lr_start": 0.5, "lr_end": 0.0}
    args.update(change(args))
    return args


BAD_INPUTS = {
    "embedding dtype": (lambda a: {"embedding": a["embedding"].double()}, TypeError,
                        "embedding must be one of float32, got torch.float64"),
    "embedding dims": (lambda a: {"embedding": a["embedding"][0]}, ValueError,
                       "embedding must have 2 dimensions"),
    "embedding strided": (lambda a: {"embedding": a["embedding"].t().contiguous().t()},
                          ValueError, "embedding must be contiguous"),
    "weight width": (lambda a: {"weight": a["weight"][:, :3].contiguous()}, ValueError,
                     r"weight must have shape \[K >= 1, 20\]"),
    "bias shape": (lambda a: {"bias": a["bias"][:2]}, ValueError, r"bias must have shape \[5\]"),
    "indices dtype": (lambda a: {"indices": a["indices"].int()}, TypeError,
                      "indices must be one of int64, got torch.int32"),
    "offsets length": (lambda a: {"offsets": a["offsets"][:-1]}, ValueError,
                       "offsets must have B \\+ 1 = 41 entries"),
    "offsets end": (lambda a: {"offsets": a["offsets"] - a["offsets"].clamp(max=1)}, ValueError,
                    "offsets must run from 0 to indices.size"),
    "offsets order": (lambda a: {"offsets": torch.cat([a["offsets"][:1], a["offsets"][1:-1]
                                                       .flip(0), a["offsets"][-1:]])},
                      ValueError, "offsets must be non-decreasing"),
    "weights shape": (lambda a: {"per_sample_weights": a["per_sample_weights"][1:]}, ValueError,
                      "per_sample_weights must have shape"),
    "index range": (lambda a: {"indices": a["indices"] + 50}, IndexError,
                    r"indices must be in \[0, 50\), got values in"),
    "negative index": (lambda a: {"indices": a["indices"] - 50}, IndexError,
                       r"indices must be in \[0, 50\)"),
    "label range": (lambda a: {"labels": a["labels"] + 5}, IndexError,
                    r"labels must be in \[0, 5\), got values in"),
    "lr": (lambda a: {"lr_start": float("nan")}, ValueError, "lr_start and lr_end must be finite"),
    "order range": (lambda a: {"order": torch.tensor([0, 40])}, IndexError,
                    r"order must be in \[0, 40\), got values in"),
    "order dtype": (lambda a: {"order": torch.tensor([0, 1], dtype=torch.int32)}, TypeError,
                    "order must be one of int64, got torch.int32"),
    "ova dtype": (lambda a: {"labels": torch.zeros(40, 5, dtype=torch.float64)}, TypeError,
                  "labels must be one of float32, got torch.float64"),
    "ova width": (lambda a: {"labels": torch.zeros(40, 4)}, ValueError,
                  r"one-vs-all labels must have shape \[B, 5\]"),
    "ova values": (lambda a: {"labels": torch.full((40, 5), 0.5)}, ValueError,
                   "one-vs-all labels must hold only 0 and 1"),
}


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_before_any_update(case, backend):
    change, error, message = BAD_INPUTS[case]
    args = _bad(change)
    before = args["embedding"].clone()
    with mmfast.backend(backend), pytest.raises(error, match=message):
        fasttext_sgd_(**args)
    assert torch.equal(args["embedding"], before)


def test_kernel_checks_direct_calls():
    """The C++ kernel guards itself: a direct torch.ops call with a bad id or label raises
    instead of reading out of bounds."""
    params, (indices, offsets, weights, labels) = _problem()
    op = torch.ops.mmfast.fasttext_sgd_
    with pytest.raises(IndexError, match=r"indices must be in \[0, 50\)"):
        op(params["embedding"], params["weight"], None, indices + 50, offsets, None, labels,
           0.5, 0.0)
    with pytest.raises(IndexError, match=r"labels must be in \[0, 5\)"):
        op(params["embedding"], params["weight"], None, indices, offsets, None, labels - 5,
           0.5, 0.0)
    with pytest.raises(ValueError, match="offsets must have B \\+ 1"):
        op(params["embedding"], params["weight"], None, indices, offsets[1:], None, labels,
           0.5, 0.0)


@pytest.mark.cuda
def test_cuda_tensors_are_refused():
    params, inputs = _problem()
    with pytest.raises(ValueError, match="CPU training kernel"):
        _run({k: None if v is None else v.cuda() for k, v in params.items()},
             tuple(None if t is None else t.cuda() for t in inputs))
