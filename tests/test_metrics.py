"""mmfast.metrics against scikit-learn (ties included), against brute-force definitions for the
multi-label top-K metrics (scikit-learn has none), on hand-computed cases, and on bad inputs."""

import re

import numpy as np
import pytest
import torch

from mmfast import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")

SEEDS = [0, 1, 2]
SIZES = [(1, 1), (2, 3), (7, 5), (33, 17), (128, 40)]  # (N, L), odd ones included
DTYPES = [torch.float16, torch.float32, torch.float64]


def _multilabel(num_samples, num_labels, seed, dtype=torch.float32, device="cpu", density=0.3):
    """Scores rounded to one decimal (so many ties) and a {0,1} target matrix."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_samples, num_labels, generator=g, dtype=torch.float64).round(decimals=1)
    targets = (torch.rand(num_samples, num_labels, generator=g) < density).long()
    return scores.to(device, dtype), targets.to(device)


def _numpy(tensor):
    # float16 -> float64 is exact, so scikit-learn sees the very same values and ties.
    return tensor.cpu().double().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()


def _brute_force_top_k(scores, targets, k):
    """P@K, R@K, Acc@K by a Python loop over samples, the lowest label index first among ties."""
    precisions, recalls, any_hits = [], [], []
    for row_scores, row_targets in zip(scores.tolist(), targets.tolist()):
        ranking = sorted(range(len(row_scores)), key=lambda label: (-row_scores[label], label))
        hits = sum(row_targets[label] for label in ranking[:k])
        precisions.append(hits / k)
        any_hits.append(float(hits > 0))
        if sum(row_targets) > 0:
            recalls.append(hits / sum(row_targets))
    return np.mean(precisions), (np.mean(recalls) if recalls else None), np.mean(any_hits)


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_classes", [(1, 1), (9, 4), (101, 13)])
def test_accuracy_matches_sklearn(seed, num_samples, num_classes, device):
    g = torch.Generator().manual_seed(seed)
    # Integer scores: frequent ties, which argmax breaks towards the lowest index like numpy.
    scores = torch.randint(0, 3, (num_samples, num_classes), generator=g).float().to(device)
    targets = torch.randint(0, num_classes, (num_samples,), generator=g).to(device)
    predictions = _numpy(scores).argmax(axis=1)
    expected = sklearn_metrics.accuracy_score(_numpy(targets), predictions)
    assert metrics.accuracy(scores, targets) == pytest.approx(expected, abs=1e-12)
    as_indices = torch.from_numpy(predictions).to(device)
    assert metrics.accuracy(as_indices, targets) == pytest.approx(expected, abs=1e-12)


def test_accuracy_ties_go_to_lowest_index():
    scores = torch.tensor([[1.0, 2.0, 2.0], [0.5, 0.5, 0.5]])
    assert metrics.accuracy(scores, torch.tensor([1, 0])) == 1.0
    assert metrics.accuracy(scores, torch.tensor([2, 1])) == 0.0


# ----------------------------------------------------------------------------- top K


def test_top_k_hand_computed():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.3],  # top 2: labels 0, 2
            [0.2, 0.7, 0.7, 0.1],  # tie between 1 and 2: top 2: 1, 2; top 1: 1
            [0.5, 0.4, 0.3, 0.2],  # no true label
        ]
    )
    targets = torch.tensor(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 0],
            [0, 0, 0, 0],
        ]
    )
    # k=1: sample 0 hits (label 0), sample 1 misses (label 1 wins the tie), sample 2 misses.
    assert metrics.precision_at_k(scores, targets, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(scores, targets, 1) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.accuracy_at_k(scores, targets, 1) == pytest.approx(1 / 3)
    # k=2: sample 0 has 1 of 2 (labels 0, 2), sample 1 has 1 of 2 (labels 1, 2).
    assert metrics.precision_at_k(scores, targets, 2) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert metrics.recall_at_k(scores, targets, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert metrics.accuracy_at_k(scores, targets, 2) == pytest.approx(2 / 3)


def test_top_k_all_tied_takes_lowest_labels():
    scores = torch.zeros(1, 5)
    assert metrics.precision_at_k(scores, torch.tensor([[1, 1, 0, 0, 0]]), 2) == 1.0
    assert metrics.precision_at_k(scores, torch.tensor([[0, 0, 0, 1, 1]]), 2) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_matches_brute_force(seed, num_samples, num_labels, dtype, device):
    scores, targets = _multilabel(num_samples, num_labels, seed, dtype, device)
    for k in sorted({1, (num_labels + 1) // 2, num_labels}):
        precision, recall, any_hit = _brute_force_top_k(scores, targets, k)
        assert metrics.precision_at_k(scores, targets, k) == pytest.approx(precision, abs=1e-12)
        assert metrics.accuracy_at_k(scores, targets, k) == pytest.approx(any_hit, abs=1e-12)
        if recall is None:
            with pytest.raises(ValueError, match="no sample with a true label"):
                metrics.recall_at_k(scores, targets, k)
        else:
            assert metrics.recall_at_k(scores, targets, k) == pytest.approx(recall, abs=1e-12)


def test_top_k_with_k_equal_to_num_labels():
    scores, targets = _multilabel(20, 6, seed=3)
    targets[0] = 0  # one sample with no true label
    num_relevant = targets.sum(1).double()
    assert metrics.precision_at_k(scores, targets, 6) == pytest.approx((num_relevant / 6).mean())
    assert metrics.recall_at_k(scores, targets, 6) == 1.0
    assert metrics.accuracy_at_k(scores, targets, 6) == pytest.approx(
        (num_relevant > 0).double().mean()
    )


def test_top_k_single_label_agrees_with_sklearn_top_k_accuracy():
    # With one true label per sample, Acc@K is top-k accuracy. No ties here: scikit-learn
    # breaks them towards the highest index.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (50,), generator=g)
    targets = torch.nn.functional.one_hot(labels, 7)
    for k in (1, 3, 6):
        expected = sklearn_metrics.top_k_accuracy_score(
            labels.numpy(), scores.numpy(), k=k, labels=range(7)
        )
        assert metrics.accuracy_at_k(scores, targets, k) == pytest.approx(expected, abs=1e-12)
        assert metrics.recall_at_k(scores, targets, k) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- ROC AUC and AP


def _sklearn_per_label(metric, scores, targets, defined):
    return np.array(
        [
            metric(_numpy(targets[:, label]), _numpy(scores[:, label]))
            if defined[label]
            else np.nan
            for label in range(scores.shape[1])
        ]
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES[2:])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_roc_auc_matches_sklearn(seed, num_samples, num_labels, dtype, device):
    scores, targets = _multilabel(num_samples, num_labels, seed, dtype, device)
    targets[:, 0] = 0  # a label with no positive is skipped
    positives = targets.sum(0)
    defined = ((positives > 0) & (positives < num_samples)).tolist()
    expected = _sklearn_per_label(sklearn_metrics.roc_auc_score, scores, targets, defined)
    result = metrics.mean_roc_auc(scores, targets, return_per_label=True)
    assert result.per_label.dtype == torch.float64 and result.per_label.device == scores.device
    np.testing.assert_allclose(result.per_label.cpu().numpy(), expected, rtol=0, atol=1e-12)
    assert result.num_skipped == defined.count(False)
    assert result.mean == pytest.approx(np.nanmean(expected), abs=1e-12)
    assert metrics.mean_roc_auc(scores, targets) == result.mean


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES[2:])
@pytest.mark.parametrize("dtype", DTYPES)
def test_average_precision_matches_sklearn(seed, num_samples, num_labels, dtype, device):
    scores, targets = _multilabel(num_samples, num_labels, seed, dtype, device)
    targets[:, 0] = 0  # skipped: no positive
    targets[:, -1] = 1  # kept: all positive, AP 1
    defined = (targets.sum(0) > 0).tolist()
    expected = _sklearn_per_label(sklearn_metrics.average_precision_score, scores, targets, defined)
    result = metrics.average_precision(scores, targets, return_per_label=True)
    np.testing.assert_allclose(result.per_label.cpu().numpy(), expected, rtol=0, atol=1e-12)
    assert result.per_label[-1].item() == pytest.approx(1.0)
    assert result.num_skipped == defined.count(False)
    assert result.mean == pytest.approx(np.nanmean(expected), abs=1e-12)
    assert metrics.average_precision(scores, targets) == result.mean


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_with_integer_scores(seed):
    # Few distinct values: long runs of ties, and a column where everything ties.
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-2, 3, (41, 6), generator=g).double()
    scores[:, 2] = 1.0
    targets = torch.randint(0, 2, (41, 6), generator=g)
    targets[:2, :] = torch.tensor([[0], [1]])  # both classes in every label
    auc = metrics.mean_roc_auc(scores, targets, return_per_label=True).per_label.numpy()
    ap = metrics.average_precision(scores, targets, return_per_label=True).per_label.numpy()
    np.testing.assert_allclose(
        auc,
        sklearn_metrics.roc_auc_score(targets.numpy(), scores.numpy(), average=None),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        ap,
        sklearn_metrics.average_precision_score(targets.numpy(), scores.numpy(), average=None),
        atol=1e-12,
    )
    assert auc[2] == 0.5


def test_ranking_metrics_hand_computed():
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    targets = torch.tensor([[0], [0], [1], [1]])
    assert metrics.mean_roc_auc(scores, targets) == pytest.approx(0.75)
    # Ranked: 0.8 (pos, precision 1), 0.4 (neg), 0.35 (pos, precision 2/3).
    assert metrics.average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)


def test_ranking_metrics_all_labels_undefined():
    scores = torch.rand(1, 3)  # N = 1: one class per label at most
    with pytest.raises(ValueError, match="only one class"):
        metrics.mean_roc_auc(scores, torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="no positive"):
        metrics.average_precision(scores, torch.zeros(1, 3))
    assert metrics.average_precision(scores, torch.tensor([[0, 1, 0]])) == 1.0


def test_ranking_metrics_accept_bool_and_float_targets():
    scores, targets = _multilabel(30, 4, seed=5)
    targets[:2] = torch.tensor([[0], [1]])
    for fn in (metrics.mean_roc_auc, metrics.average_precision):
        expected = fn(scores, targets)
        assert fn(scores, targets.bool()) == expected
        assert fn(scores, targets.float()) == expected


# ----------------------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_classes", [(1, 3), (10, 4), (257, 11)])
@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_f1_single_label_matches_sklearn(seed, num_samples, num_classes, given, average, device):
    g = torch.Generator().manual_seed(seed)
    # Classes 0 .. C-2 only, and class 1 never used: a class absent from both sides, which
    # counts in the label set only when num_classes declares it.
    pool = torch.tensor([c for c in range(num_classes - 1) if c != 1] or [0])
    predictions = pool[torch.randint(0, len(pool), (num_samples,), generator=g)].to(device)
    targets = pool[torch.randint(0, len(pool), (num_samples,), generator=g)].to(device)
    num_seen = max(predictions.max().item(), targets.max().item()) + 1
    got = metrics.f1_score(predictions, targets, average, num_classes if given else None)
    if given:
        labels = range(num_classes)
    elif average is None:
        labels = range(num_seen)  # per-class results are indexed by class: 0 .. max seen
    else:
        labels = None  # scikit-learn's default label set: the classes seen
    expected = sklearn_metrics.f1_score(
        _numpy(targets), _numpy(predictions), average=average, labels=labels, zero_division=0
    )
    if average is None:
        assert got.dtype == torch.float64 and got.device == predictions.device
        np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-12)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES[1:])  # sklearn reads [N, 1] as binary
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_f1_multilabel_matches_sklearn(seed, num_samples, num_labels, average, device):
    _, targets = _multilabel(num_samples, num_labels, seed, device=device)
    _, predictions = _multilabel(num_samples, num_labels, seed + 100, device=device)
    targets[:, 0] = predictions[:, 0] = 0  # a label never true nor predicted: F1 0
    got = metrics.f1_score(predictions.bool(), targets, average)
    expected = sklearn_metrics.f1_score(
        _numpy(targets), _numpy(predictions), average=average, zero_division=0
    )
    if average is None:
        np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-12)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_f1_hand_computed():
    predictions = torch.tensor([0, 0, 1, 2, 2, 2])
    targets = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: TP 1 FP 1 FN 1 -> 1/2; class 1: TP 1 FN 1 -> 2/3; class 2: TP 2 FP 1 -> 4/5
    per_class = metrics.f1_score(predictions, targets, average=None)
    torch.testing.assert_close(per_class, torch.tensor([1 / 2, 2 / 3, 4 / 5], dtype=torch.float64))
    assert metrics.f1_score(predictions, targets, "micro") == pytest.approx(4 / 6)
    assert metrics.f1_score(predictions, targets, "macro") == pytest.approx(
        (1 / 2 + 2 / 3 + 4 / 5) / 3
    )
    assert metrics.f1_score(predictions, targets, "weighted") == pytest.approx(
        (2 / 2 + 2 * 2 / 3 + 2 * 4 / 5) / 6
    )
    # A declared fourth class nobody used has F1 0 and counts in the macro mean only.
    assert metrics.f1_score(predictions, targets, "macro", num_classes=4) == pytest.approx(
        (1 / 2 + 2 / 3 + 4 / 5) / 4
    )
    assert metrics.f1_score(predictions, targets, None, num_classes=4)[3].item() == 0.0


def test_f1_nothing_true_nor_predicted_is_zero():
    empty = torch.zeros(4, 3, dtype=torch.long)
    for average in ("micro", "macro", "weighted"):
        assert metrics.f1_score(empty, empty, average) == 0.0


# ----------------------------------------------------------------------------- bad inputs

_SCORES = torch.rand(4, 3)
_TARGETS = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]])
_LABELS = torch.tensor([0, 2, 1, 1])


def _assert_raises(exception, message, function, *args, **kwargs):
    """``function`` raises ``exception`` whose message starts with the function's name and
    contains ``message`` literally."""
    with pytest.raises(exception, match=re.escape(message)) as error:
        function(*args, **kwargs)
    assert str(error.value).startswith(f"{function.__name__}: ")


@pytest.mark.parametrize(
    "args,exception,message",
    [
        (([0, 1], _LABELS), TypeError, "scores_or_predictions must be a torch.Tensor, got list"),
        ((torch.rand(4, 3, 2), _LABELS), ValueError, "got shape (4, 3, 2)"),
        ((torch.randint(0, 3, (4, 3)), _LABELS), TypeError, "must be a floating-point tensor"),
        ((torch.tensor([[0.1, float("nan")]]), _LABELS[:1]), ValueError, "must not contain NaN"),
        ((_SCORES, _LABELS[:3]), ValueError, "targets must have 4 entries (one per sample), got 3"),
        ((_SCORES, _LABELS.float()), TypeError, "targets must be an integer tensor"),
        ((_SCORES, torch.tensor([0, 1, 3, 1])), ValueError, "in [0, 3), got values in [0, 3]"),
        ((_LABELS, torch.tensor([0, -1, 0, 0])), ValueError, "got values in [-1, 0]"),
        ((_LABELS[:0], _LABELS[:0]), ValueError, "at least one sample"),
    ],
)
def test_accuracy_bad_inputs(args, exception, message):
    _assert_raises(exception, message, metrics.accuracy, *args)


@pytest.mark.parametrize(
    "function", [metrics.precision_at_k, metrics.recall_at_k, metrics.accuracy_at_k]
)
@pytest.mark.parametrize(
    "args,exception,message",
    [
        ((_SCORES, _TARGETS, 0), ValueError, "k must be in [1, 3], got 0"),
        ((_SCORES, _TARGETS, 4), ValueError, "k must be in [1, 3], got 4"),
        ((_SCORES, _TARGETS, 1.0), TypeError, "k must be an int, got float"),
        ((_SCORES, _TARGETS, True), TypeError, "k must be an int, got bool"),
        ((_SCORES, _LABELS, 1), ValueError, "targets must have 2 dimensions, got shape (4,)"),
        ((_SCORES, _TARGETS[:, :2], 1), ValueError, "must have shape (4, 3), got (4, 2)"),
        ((_SCORES, _TARGETS * 2, 1), ValueError, "targets must hold only 0 and 1, got 2"),
        ((_SCORES[:, :0], _TARGETS[:, :0], 1), ValueError, "at least one sample and one label"),
    ],
)
def test_top_k_bad_inputs(function, args, exception, message):
    _assert_raises(exception, message, function, *args)


@pytest.mark.parametrize("function", [metrics.mean_roc_auc, metrics.average_precision])
@pytest.mark.parametrize(
    "args,exception,message",
    [
        ((_SCORES.long(), _TARGETS), TypeError, "scores must be a floating-point tensor"),
        ((_SCORES[0], _TARGETS[0]), ValueError, "scores must have 2 dimensions"),
        ((_SCORES, _TARGETS - 0.5), ValueError, "targets must hold only 0 and 1, got 0.5"),
        ((_SCORES, "labels"), TypeError, "targets must be a torch.Tensor, got str"),
    ],
)
def test_ranking_bad_inputs(function, args, exception, message):
    _assert_raises(exception, message, function, *args)


@pytest.mark.parametrize(
    "args,kwargs,exception,message",
    [
        ((_LABELS, _LABELS), {"average": "binary"}, ValueError, "average must be one of"),
        ((_LABELS, _LABELS), {"num_classes": 0}, ValueError, "num_classes must be >= 1, got 0"),
        ((_LABELS, _LABELS), {"num_classes": 2}, ValueError, "predictions must hold class"),
        ((_LABELS, _TARGETS), {}, ValueError, "targets must have 1 dimensions"),
        ((_TARGETS, _LABELS), {}, ValueError, "targets must have 2 dimensions"),
        ((_TARGETS, _TARGETS), {"num_classes": 4}, ValueError, "must equal the 3 columns"),
        ((_TARGETS[:0], _TARGETS[:0]), {}, ValueError, "at least one sample and one label"),
        ((_LABELS[:0], _LABELS[:0]), {}, ValueError, "at least one sample"),
        ((_TARGETS / 2, _TARGETS), {}, ValueError, "predictions must hold only 0 and 1, got 0.5"),
        ((torch.zeros(2, 2, 2), _TARGETS), {}, ValueError, "got shape (2, 2, 2)"),
        ((_LABELS.bool(), _LABELS), {}, TypeError, "predictions must be an integer tensor"),
    ],
)
def test_f1_bad_inputs(args, kwargs, exception, message):
    _assert_raises(exception, message, metrics.f1_score, *args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_on_different_devices():
    with pytest.raises(ValueError, match="targets must be on"):
        metrics.precision_at_k(_SCORES.cuda(), _TARGETS, 1)


def test_non_contiguous_inputs_give_the_same_results():
    scores, targets = _multilabel(40, 9, seed=4)
    targets[:2] = torch.tensor([[0], [1]])
    strided_scores, strided_targets = scores.t().contiguous().t(), targets.t().contiguous().t()
    assert not strided_scores.is_contiguous()
    for function in (metrics.mean_roc_auc, metrics.average_precision):
        assert function(strided_scores, strided_targets) == function(scores, targets)
    assert metrics.precision_at_k(strided_scores, strided_targets, 3) == metrics.precision_at_k(
        scores, targets, 3
    )
    assert metrics.f1_score(strided_targets, targets) == metrics.f1_score(targets, targets)
