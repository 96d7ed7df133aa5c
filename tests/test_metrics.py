"""mmfast.metrics against scikit-learn (ties included), against brute-force definitions for the
multi-label top-K metrics (scikit-learn has none), on hand-computed cases, and on bad inputs."""

import json
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


@pytest.mark.cuda
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


# ----------------------------------------------------------------------------- confusion matrix


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_classes", [(1, 1), (10, 4), (257, 11)])
def test_confusion_matrix_matches_sklearn(seed, num_samples, num_classes, device):
    g = torch.Generator().manual_seed(seed)
    predictions = torch.randint(0, num_classes, (num_samples,), generator=g).to(device)
    targets = torch.randint(0, num_classes, (num_samples,), generator=g).to(device)
    got = metrics.confusion_matrix(predictions, targets, num_classes)
    expected = sklearn_metrics.confusion_matrix(
        _numpy(targets), _numpy(predictions), labels=range(num_classes)
    )
    assert got.dtype == torch.int64 and got.device == predictions.device
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


def test_confusion_matrix_hand_computed():
    predictions = torch.tensor([0, 0, 1, 2, 2, 2], dtype=torch.int32)
    targets = torch.tensor([0, 1, 1, 2, 2, 0], dtype=torch.int32)
    expected = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 2], [0, 0, 0]])  # rows: true class
    torch.testing.assert_close(metrics.confusion_matrix(predictions, targets, 4)[:, :3], expected)
    assert metrics.confusion_matrix(predictions, targets, 4)[:, 3].sum() == 0
    empty = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(metrics.confusion_matrix(empty, empty, 2), torch.zeros(2, 2).long())


# ----------------------------------------------------------------------------- per class


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_classes", [(1, 3), (10, 4), (257, 11)])
@pytest.mark.parametrize("given", [False, True])
def test_precision_recall_f1_single_label_matches_sklearn(
    seed, num_samples, num_classes, given, device
):
    g = torch.Generator().manual_seed(seed)
    # Class 1 only ever predicted, class 2 only ever true, the last class never used:
    # every zero-division case.
    classes = list(range(num_classes - 1))
    predicted_pool = torch.tensor([c for c in classes if c != 2] or [0])
    true_pool = torch.tensor([c for c in classes if c != 1] or [0])
    predictions = predicted_pool[torch.randint(0, len(predicted_pool), (num_samples,), generator=g)]
    targets = true_pool[torch.randint(0, len(true_pool), (num_samples,), generator=g)]
    predictions, targets = predictions.to(device), targets.to(device)
    got = metrics.precision_recall_f1(predictions, targets, num_classes if given else None)
    num_seen = max(predictions.max().item(), targets.max().item()) + 1
    expected = sklearn_metrics.precision_recall_fscore_support(
        _numpy(targets), _numpy(predictions), labels=range(num_classes if given else num_seen),
        zero_division=0,
    )
    for value, sklearn_value in zip(got, expected):
        assert value.device == predictions.device
        np.testing.assert_allclose(value.cpu().numpy(), sklearn_value, rtol=0, atol=1e-12)
    assert got.precision.dtype == torch.float64 and got.support.dtype == torch.int64
    # f1_score is the same counting: its per-class F1 is this one.
    torch.testing.assert_close(
        got.f1, metrics.f1_score(predictions, targets, None, num_classes if given else None)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES[1:])  # sklearn reads [N, 1] as binary
def test_precision_recall_f1_multilabel_matches_sklearn(seed, num_samples, num_labels, device):
    _, targets = _multilabel(num_samples, num_labels, seed, device=device)
    _, predictions = _multilabel(num_samples, num_labels, seed + 100, device=device)
    targets[:, 0] = predictions[:, 0] = 0  # never true nor predicted: all 0
    got = metrics.precision_recall_f1(predictions.float(), targets.bool())
    expected = sklearn_metrics.precision_recall_fscore_support(
        _numpy(targets), _numpy(predictions), zero_division=0
    )
    for value, sklearn_value in zip(got, expected):
        np.testing.assert_allclose(value.cpu().numpy(), sklearn_value, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- report


def _single_label_case(num_samples, num_classes, seed, device, num_unknown):
    """Untied float64 scores (scikit-learn's top-k accuracy breaks ties its own way) and class
    targets, the first ``num_unknown`` of them -100."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_samples, num_classes, generator=g, dtype=torch.float64)
    targets = torch.randint(0, num_classes, (num_samples,), generator=g)
    targets[:num_unknown] = metrics.UNKNOWN_TARGET
    return scores.to(device), targets.to(device)


def _assert_plain_json(report):
    """Only Python numbers, bools, None, strings, lists and dicts, and no NaN: JSON as is."""
    assert json.loads(json.dumps(report, allow_nan=False)) == report


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_classes,num_unknown", [(9, 4, 0), (60, 7, 5),
                                                                 (301, 12, 30)])
def test_report_single_label_matches_sklearn(seed, num_samples, num_classes, num_unknown, device):
    scores, targets = _single_label_case(num_samples, num_classes, seed, device, num_unknown)
    report = metrics.classification_report(scores, targets, multilabel=False, ks=(1, 3, 5))
    _assert_plain_json(report)
    y_true, y_pred = _numpy(targets), _numpy(scores).argmax(axis=1)
    known = y_true != metrics.UNKNOWN_TARGET
    assert report["items"] == num_samples and report["unknown_targets"] == num_unknown
    # A -100 target never equals a prediction: a miss.
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    for average in ("micro", "macro", "weighted"):
        expected = sklearn_metrics.f1_score(
            y_true[known], y_pred[known], average=average, zero_division=0
        )
        assert report[f"f1_{average}"] == pytest.approx(expected, abs=1e-12)
    for k in sorted({min(k, num_classes - 1) for k in (1, 3, 5)}):  # k = K is not scored
        # Top-k accuracy over the known items, scaled to all N: the unknown ones miss.
        expected = sklearn_metrics.top_k_accuracy_score(
            y_true[known], _numpy(scores)[known], k=k, labels=range(num_classes)
        ) * known.mean()
        assert report[f"Acc@{k}"] == pytest.approx(expected, abs=1e-12)
        assert report[f"R@{k}"] == report[f"Acc@{k}"]
        assert report[f"P@{k}"] == pytest.approx(expected / k, abs=1e-12)
    per_class = sklearn_metrics.precision_recall_fscore_support(
        y_true[known], y_pred[known], labels=range(num_classes), zero_division=0
    )
    for name, expected in zip(("precision", "recall", "f1", "support"), per_class):
        assert len(report["per_class"][name]) == num_classes
        np.testing.assert_allclose(report["per_class"][name], expected, rtol=0, atol=1e-12)


def test_report_single_label_top_k_ties_go_to_lowest_index():
    scores = torch.tensor([[0.2, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3]])
    targets = torch.tensor([2, 3])
    report = metrics.classification_report(scores, targets, multilabel=False, ks=(1, 2, 3, 4))
    # Ranked: sample 0 -> 1, 2, 0, 3; sample 1 -> 0, 1, 2, 3.
    assert [report[f"Acc@{k}"] for k in (1, 2, 3, 4)] == [0.0, 0.5, 0.5, 1.0]
    assert [report[f"P@{k}"] for k in (1, 2, 3, 4)] == [0.0, 0.25, 0.5 / 3, 0.25]
    assert report["accuracy"] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_samples,num_labels", SIZES[2:])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_report_multilabel_matches_sklearn(seed, num_samples, num_labels, dtype, threshold,
                                           device):
    probabilities, targets = _multilabel(num_samples, num_labels, seed, torch.float64, device)
    # Logits 0.8 apart with 0 among them: the thresholds (logits 0 and -0.85) fall clear of
    # every value, so the float16 sigmoid and numpy's agree on each prediction.
    scores = (probabilities * 8 - 4).to(dtype)
    targets[:, 0] = 0  # a label with no positive: no AP, F1 0
    targets[0] = 0  # an item with no true label: left out of R@k, counts in P@k and Acc@k
    report = metrics.classification_report(scores, targets, multilabel=True, threshold=threshold)
    _assert_plain_json(report)
    predictions = (1 / (1 + np.exp(-_numpy(scores))) >= threshold).astype(np.int64)
    y_true = _numpy(targets)
    assert report["items"] == num_samples and report["multilabel"] is True
    assert report["subset_accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(y_true, predictions), abs=1e-12
    )
    defined = (targets.sum(0) > 0).tolist()
    expected_ap = _sklearn_per_label(sklearn_metrics.average_precision_score, scores, targets,
                                     defined)
    assert report["mAP"] == pytest.approx(np.nanmean(expected_ap), abs=1e-12)
    for average in ("micro", "macro", "weighted"):
        expected = sklearn_metrics.f1_score(y_true, predictions, average=average, zero_division=0)
        assert report[f"f1_{average}"] == pytest.approx(expected, abs=1e-12)
    for k in sorted({1, 3, min(5, num_labels)}):
        precision, recall, any_hit = _brute_force_top_k(scores, targets, k)
        assert report[f"P@{k}"] == pytest.approx(precision, abs=1e-12)
        assert report[f"R@{k}"] == pytest.approx(recall, abs=1e-12)
        assert report[f"Acc@{k}"] == pytest.approx(any_hit, abs=1e-12)
    per_class = sklearn_metrics.precision_recall_fscore_support(
        y_true, predictions, zero_division=0
    )
    for name, expected in zip(("precision", "recall", "f1", "support"), per_class):
        np.testing.assert_allclose(report["per_class"][name], expected, rtol=0, atol=1e-12)


def test_report_unknown_targets_count_as_misses():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    targets = torch.tensor([0, -100, 0])
    report = metrics.classification_report(scores, targets, multilabel=False)
    assert report["unknown_targets"] == 1
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["Acc@2"] == pytest.approx(2 / 3)  # even with k = K the unknown one misses
    # Per class: only the two known items; class 1 was predicted only for the unknown one.
    assert report["per_class"]["support"] == [2, 0]
    assert report["per_class"]["precision"] == [1.0, 0.0]
    assert report["f1_macro"] == 1.0  # over the classes seen among the known items


def test_report_all_targets_unknown():
    report = metrics.classification_report(torch.rand(4, 3), torch.full((4,), -100), False)
    _assert_plain_json(report)
    assert report["accuracy"] == report["Acc@3"] == report["P@1"] == 0.0
    assert report["f1_micro"] == report["f1_macro"] == report["f1_weighted"] == 0.0
    assert report["per_class"]["support"] == [0, 0, 0]


def test_report_multilabel_without_positives_has_no_map_nor_recall():
    report = metrics.classification_report(torch.randn(5, 3), torch.zeros(5, 3), True)
    _assert_plain_json(report)
    assert report["mAP"] is None and report["R@1"] is None
    assert report["Acc@3"] == 0.0 and report["per_class"]["support"] == [0, 0, 0]


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize(
    "num_classes,ks,expected_ks",
    [(3, (1, 3, 5), [1, 3]), (1, (1, 3, 5), [1]), (10, (5, 1), [5, 1]), (4, [2, 2, 9], [2, 4])],
)
def test_report_caps_k_at_num_classes(multilabel, num_classes, ks, expected_ks):
    scores = torch.randn(6, num_classes)
    if multilabel:
        targets = torch.ones(6, num_classes)
    else:
        targets = torch.randint(0, num_classes, (6,))
    report = metrics.classification_report(scores, targets, multilabel, ks=ks)
    got_ks = [int(key[2:]) for key in report if key.startswith("P@")]
    assert got_ks == expected_ks
    assert all(f"R@{k}" in report and f"Acc@{k}" in report for k in expected_ks)
    if num_classes in expected_ks:
        assert report[f"Acc@{num_classes}"] == 1.0  # every target is among all classes


def test_report_on_float16_and_int32_inputs_is_plain_json(device):
    scores, targets = _single_label_case(40, 5, 0, device, num_unknown=4)
    report = metrics.classification_report(scores.half(), targets.int(), multilabel=False)
    _assert_plain_json(report)
    assert isinstance(report["items"], int) and isinstance(report["accuracy"], float)
    assert all(isinstance(value, int) for value in report["per_class"]["support"])


# ----------------------------------------------------------------------------- bad inputs (new)


@pytest.mark.parametrize(
    "args,exception,message",
    [
        ((_LABELS, _LABELS, 0), ValueError, "num_classes must be >= 1, got 0"),
        ((_LABELS, _LABELS, None), TypeError, "num_classes must be an int, got NoneType"),
        ((_LABELS, _LABELS, 2), ValueError, "predictions must hold class indices in [0, 2)"),
        ((_LABELS, torch.tensor([0, 3, 0, 0]), 3), ValueError, "targets must hold class indices"),
        ((_LABELS, torch.tensor([0, -100, 0, 0]), 3), ValueError, "got values in [-100, 0]"),
        ((_SCORES, _LABELS, 3), ValueError, "predictions must have 1 dimensions, got shape (4, 3)"),
        ((_LABELS, _LABELS[:3], 3), ValueError, "targets must have 4 entries"),
        ((_LABELS.float(), _LABELS, 3), TypeError, "predictions must be an integer tensor"),
        (([0, 1], _LABELS, 3), TypeError, "predictions must be a torch.Tensor, got list"),
    ],
)
def test_confusion_matrix_bad_inputs(args, exception, message):
    _assert_raises(exception, message, metrics.confusion_matrix, *args)


@pytest.mark.parametrize(
    "args,exception,message",
    [
        ((_LABELS, _LABELS, 0), ValueError, "num_classes must be >= 1, got 0"),
        ((_LABELS, _LABELS, 2), ValueError, "predictions must hold class"),
        ((_LABELS, _TARGETS), ValueError, "targets must have 1 dimensions"),
        ((_TARGETS, _LABELS), ValueError, "targets must have 2 dimensions"),
        ((_TARGETS, _TARGETS, 4), ValueError, "must equal the 3 columns"),
        ((_TARGETS * 3, _TARGETS), ValueError, "predictions must hold only 0 and 1, got 3"),
        ((_LABELS[:0], _LABELS[:0]), ValueError, "at least one sample"),
        ((torch.zeros(2, 2, 2), _TARGETS), ValueError, "got shape (2, 2, 2)"),
    ],
)
def test_precision_recall_f1_bad_inputs(args, exception, message):
    _assert_raises(exception, message, metrics.precision_recall_f1, *args)


@pytest.mark.parametrize(
    "args,kwargs,exception,message",
    [
        ((_SCORES, _LABELS, 1), {}, TypeError, "multilabel must be a bool, got int"),
        ((_SCORES, _LABELS, False), {"ks": 5}, TypeError, "ks must be a sequence of ints"),
        ((_SCORES, _LABELS, False), {"ks": ()}, ValueError, "ks must hold at least one k"),
        ((_SCORES, _LABELS, False), {"ks": (1, 0)}, ValueError, "ks[1] must be >= 1, got 0"),
        ((_SCORES, _LABELS, False), {"ks": (1.5,)}, TypeError, "ks[0] must be an int, got float"),
        ((_SCORES, _TARGETS, True), {"threshold": 1.0}, ValueError,
         "threshold must be a number in (0, 1), got 1.0"),
        ((_SCORES, _TARGETS, True), {"threshold": "0.5"}, ValueError, "threshold must be"),
        ((_SCORES.long(), _LABELS, False), {}, TypeError, "scores must be a floating-point"),
        ((_SCORES[0], _LABELS, False), {}, ValueError, "scores must have 2 dimensions"),
        ((_SCORES[:0], _LABELS[:0], False), {}, ValueError, "scores must have at least one"),
        ((_SCORES, _TARGETS, False), {}, ValueError, "targets must have 1 dimensions"),
        ((_SCORES, _LABELS[:2], False), {}, ValueError, "targets must have 4 entries"),
        ((_SCORES, _LABELS.float(), False), {}, TypeError, "targets must be an integer tensor"),
        ((_SCORES, torch.tensor([0, 1, 3, -100]), False), {}, ValueError,
         "targets must hold class indices in [0, 3) or -100 (a label unknown to the model), "
         "got 3"),
        ((_SCORES, torch.tensor([0, -1, 0, 0]), False), {}, ValueError, "or -100"),
        ((_SCORES, _LABELS, True), {}, ValueError, "targets must have 2 dimensions"),
        ((_SCORES, _TARGETS * 2, True), {}, ValueError, "targets must hold only 0 and 1, got 2"),
        ((_SCORES, _TARGETS[:, :2], True), {}, ValueError, "must have shape (4, 3), got (4, 2)"),
    ],
)
def test_report_bad_inputs(args, kwargs, exception, message):
    _assert_raises(exception, message, metrics.classification_report, *args, **kwargs)
