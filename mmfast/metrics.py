"""Classification metrics in plain PyTorch (DESIGN 1 and 3).

- ``accuracy`` and ``f1_score`` for single-label classification (AnANet, paper 004); ``f1_score``
  also takes multi-label {0,1} matrices.
- ``precision_at_k``, ``recall_at_k``, ``accuracy_at_k``: the hashtag metrics P@K, R@K, Acc@K of
  CACNet (paper 000) for multi-label targets.
- ``mean_roc_auc`` and ``average_precision`` per label and averaged (paper 002's concept
  evaluation, and the Avg.Precision of paper 000's Table 2).
- ``confusion_matrix`` and ``precision_recall_f1`` (per class, the counts behind ``f1_score``), and
  ``classification_report``, every figure of ``mmfast eval`` in one JSON-ready dict
  (``mmfast.report`` formats it).

Every function runs on the device of its inputs and returns a Python float, or a float64 tensor on
that device for per-class values. Tied scores: the top-K metrics rank the lower label index first;
ROC AUC and average precision treat a run of equal scores as one threshold, as scikit-learn does.
``tests/test_metrics.py`` holds every metric to scikit-learn or to a brute-force definition.
"""

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mmfast.ops._checks import check_same_device, check_tensor

__all__ = [
    "UNKNOWN_TARGET",
    "PerLabelScore",
    "PrecisionRecallF1",
    "accuracy",
    "accuracy_at_k",
    "average_precision",
    "classification_report",
    "confusion_matrix",
    "f1_score",
    "mean_roc_auc",
    "precision_at_k",
    "precision_recall_f1",
    "recall_at_k",
]

UNKNOWN_TARGET = -100
"""A single-label target for an item whose label the model does not know (``cross_entropy``'s
``ignore_index``): ``classification_report`` counts it as a miss."""

_F1_AVERAGES = ("micro", "macro", "weighted", None)


class PerLabelScore(NamedTuple):
    """A metric computed per label and averaged over the labels where it is defined."""

    mean: float
    """Unweighted mean over the labels that were scored."""
    per_label: torch.Tensor
    """[L] float64 on the input's device; NaN for a label that was skipped."""
    num_skipped: int
    """How many labels were skipped because the metric is undefined for them."""


class PrecisionRecallF1(NamedTuple):
    """Per-class figures of ``precision_recall_f1``, each [C] on the input's device; a ratio
    whose denominator is 0 is 0 (scikit-learn's ``zero_division=0``)."""

    precision: torch.Tensor
    """[C] float64: TP / predicted."""
    recall: torch.Tensor
    """[C] float64: TP / true."""
    f1: torch.Tensor
    """[C] float64: 2 TP / (predicted + true)."""
    support: torch.Tensor
    """[C] int64: the number of true samples of each class."""


# ----------------------------------------------------------------------------- argument checks


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_positive_int(fn: str, name: str, value, upper: int | None = None) -> int:
    # numbers.Integral admits numpy integers; bool is an Integral too but never a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < 1 or (upper is not None and value > upper):
        expected = f"in [1, {upper}]" if upper is not None else ">= 1"
        raise ValueError(f"{fn}: {name} must be {expected}, got {value}")
    return int(value)


def _check_scores(fn: str, name: str, scores) -> None:
    """scores: [N, L] floating point, N and L >= 1, no NaN (a NaN has no place in a ranking)."""
    check_tensor(fn, name, scores, ndim=2)
    if not scores.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(
            f"{fn}: {name} must have at least one sample and one label, "
            f"got shape {tuple(scores.shape)}"
        )
    if scores.isnan().any():
        raise ValueError(f"{fn}: {name} must not contain NaN")


def _check_indicator(fn: str, name: str, value, shape: torch.Size) -> torch.Tensor:
    """A {0,1} matrix of ``shape`` (bool, integer or floating dtype), returned as bool."""
    check_tensor(fn, name, value, ndim=2)
    if value.shape != shape:
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.is_complex():
        raise TypeError(
            f"{fn}: {name} must be a bool, integer or floating tensor, got {value.dtype}"
        )
    if value.dtype != torch.bool:
        not_binary = (value != 0) & (value != 1)
        if not_binary.any():
            raise ValueError(
                f"{fn}: {name} must hold only 0 and 1, got {value[not_binary][0].item()}"
            )
    return value.bool()


def _check_index_vector(fn: str, name: str, value, num_samples: int) -> None:
    """value: [num_samples] integer tensor (its values unchecked)."""
    check_tensor(fn, name, value, ndim=1)
    if not _is_integer_dtype(value.dtype):
        raise TypeError(
            f"{fn}: {name} must be an integer tensor of class indices, got {value.dtype}"
        )
    if value.shape[0] != num_samples:
        raise ValueError(
            f"{fn}: {name} must have {num_samples} entries (one per sample), got {value.shape[0]}"
        )


def _check_class_indices(fn: str, name: str, value, num_samples: int, num_classes: int | None):
    """value: [num_samples] integer class indices in [0, num_classes) (only >= 0 when None)."""
    _check_index_vector(fn, name, value, num_samples)
    if num_samples == 0:
        return
    low, high = value.min().item(), value.max().item()
    if low < 0 or (num_classes is not None and high >= num_classes):
        expected = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(
            f"{fn}: {name} must hold class indices in {expected}, got values in [{low}, {high}]"
        )


def _check_not_empty(fn: str, name: str, value: torch.Tensor) -> None:
    if value.shape[0] == 0:
        raise ValueError(
            f"{fn}: {name} must have at least one sample, got shape {tuple(value.shape)}"
        )


# ----------------------------------------------------------------------------- single label


def accuracy(scores_or_predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose predicted class equals the target class.

    scores_or_predictions: [N, C] floating scores, where the prediction is the arg max of each
        row (ties go to the lowest class index), or [N] integer class predictions.
    targets: [N] integer class indices, in [0, C) when scores are given.
    """
    fn = "accuracy"
    check_tensor(fn, "scores_or_predictions", scores_or_predictions)
    if scores_or_predictions.dim() == 2:
        _check_scores(fn, "scores_or_predictions", scores_or_predictions)
        # torch.argmax returns the first maximal index on every device.
        predictions = scores_or_predictions.argmax(dim=1)
        num_classes = scores_or_predictions.shape[1]
    elif scores_or_predictions.dim() == 1:
        predictions = scores_or_predictions
        _check_class_indices(fn, "scores_or_predictions", predictions, predictions.shape[0], None)
        _check_not_empty(fn, "scores_or_predictions", predictions)
        num_classes = None
    else:
        raise ValueError(
            f"{fn}: scores_or_predictions must have 2 dimensions (scores [N, C]) or 1 (class "
            f"predictions [N]), got shape {tuple(scores_or_predictions.shape)}"
        )
    _check_class_indices(fn, "targets", targets, predictions.shape[0], num_classes)
    check_same_device(fn, "targets", targets, scores_or_predictions)
    return (predictions == targets).double().mean().item()


# ----------------------------------------------------------------------------- top K (paper 000)


def _top_k_hit_counts(scores: torch.Tensor, relevant: torch.Tensor, ks) -> list[torch.Tensor]:
    """For each k of ``ks`` (each in [1, L]), [N] the number of true labels among each sample's k
    highest-scored labels, from one sort. scores: [N, L]; relevant: [N, L] bool."""
    # A stable descending sort keeps tied labels in index order, so ties go to the lowest label
    # index and the top K does not depend on the device or the sorting algorithm.
    top_labels = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : max(ks)]
    cumulative_hits = relevant.gather(1, top_labels).cumsum(dim=1)  # [N, max k]
    return [cumulative_hits[:, k - 1] for k in ks]


def _top_k_hits(fn: str, scores, targets, k) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checks the arguments of a top-K metric. Returns ([N] true labels among each sample's K
    highest-scored labels, [N] true labels per sample, K)."""
    _check_scores(fn, "scores", scores)
    relevant = _check_indicator(fn, "targets", targets, scores.shape)
    check_same_device(fn, "targets", targets, scores)
    k = _check_positive_int(fn, "k", k, upper=scores.shape[1])
    (hits,) = _top_k_hit_counts(scores, relevant, (k,))
    return hits, relevant.sum(dim=1), k


def _mean_precision(hits: torch.Tensor, k: int) -> float:
    return (hits.double() / k).mean().item()


def _mean_recall(hits: torch.Tensor, num_relevant: torch.Tensor) -> float | None:
    """None when no sample has a true label (recall 0/0 everywhere)."""
    has_relevant = num_relevant > 0
    if not has_relevant.any():
        return None
    return (hits[has_relevant].double() / num_relevant[has_relevant]).mean().item()


def _hit_rate(hits: torch.Tensor) -> float:
    return (hits > 0).double().mean().item()


def precision_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """P@K: the fraction of a sample's top K labels that are true, averaged over all N samples.

    A sample with no true label counts, with precision 0 (none of its top K can match).

    scores: [N, L] floating scores (only their order matters); targets: [N, L] {0,1} matrix;
    1 <= k <= L. Among equal scores the lower label index ranks first (a stable sort).
    """
    hits, _, k = _top_k_hits("precision_at_k", scores, targets, k)
    return _mean_precision(hits, k)


def recall_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """R@K: the fraction of a sample's true labels that are among its top K, averaged over the
    samples with at least one true label.

    A sample with no true label has no recall (0/0) and is left out of the average; if no sample
    has a true label, ValueError.

    scores: [N, L] floating scores (only their order matters); targets: [N, L] {0,1} matrix;
    1 <= k <= L. Among equal scores the lower label index ranks first (a stable sort).
    """
    fn = "recall_at_k"
    hits, num_relevant, _ = _top_k_hits(fn, scores, targets, k)
    recall = _mean_recall(hits, num_relevant)
    if recall is None:
        raise ValueError(f"{fn}: targets has no sample with a true label, so recall is undefined")
    return recall


def accuracy_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Acc@K: the fraction of all N samples with at least one true label among their top K.

    A sample with no true label counts, as a miss.

    scores: [N, L] floating scores (only their order matters); targets: [N, L] {0,1} matrix;
    1 <= k <= L. Among equal scores the lower label index ranks first (a stable sort).
    """
    hits, _, _ = _top_k_hits("accuracy_at_k", scores, targets, k)
    return _hit_rate(hits)


# ----------------------------------------------------------------------------- ranking per label


def _ascending_tie_runs(scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sorts each row of ``scores`` [L, N] (one row per label) ascending and finds its runs of
    equal values.

    Returns ``order`` [L, N], the sorting permutation of each row, and ``first``, ``last``
    [L, N] int64: for the value at sorted position i, the sorted positions of the first and the
    last value equal to it. Which tied sample comes first does not matter to the callers, which
    look only at whole runs.
    """
    sorted_scores, order = torch.sort(scores, dim=1)
    num_samples = scores.shape[1]
    positions = torch.arange(num_samples, device=scores.device).expand_as(order)
    starts_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    starts_run[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    ends_run = torch.ones_like(starts_run)
    ends_run[:, :-1] = starts_run[:, 1:]
    # Carry each run's start forward and its end backward.
    first = torch.where(starts_run, positions, 0).cummax(dim=1).values
    last = torch.where(ends_run, positions, num_samples - 1).flip(1).cummin(dim=1).values.flip(1)
    return order, first, last


def _ranked_targets(fn: str, scores, targets) -> tuple[torch.Tensor, ...]:
    """Checks the arguments of a per-label ranking metric. Returns each label's targets in the
    ascending order of its scores ([L, N] float64) and the tie runs of ``_ascending_tie_runs``.
    Labels become rows so that every sort and scan runs along contiguous memory."""
    _check_scores(fn, "scores", scores)
    relevant = _check_indicator(fn, "targets", targets, scores.shape)
    check_same_device(fn, "targets", targets, scores)
    order, first, last = _ascending_tie_runs(scores.t().contiguous())
    return relevant.t().gather(1, order).double(), first, last


def _summarize(fn: str, per_label: torch.Tensor, undefined_when: str, return_per_label: bool):
    scored = ~per_label.isnan()
    num_scored = int(scored.sum())
    if num_scored == 0:
        raise ValueError(
            f"{fn}: every label of targets {undefined_when}, so no label can be scored"
        )
    mean = per_label[scored].mean().item()
    if return_per_label:
        return PerLabelScore(mean, per_label, per_label.numel() - num_scored)
    return mean


def mean_roc_auc(
    scores: torch.Tensor, targets: torch.Tensor, *, return_per_label: bool = False
) -> float | PerLabelScore:
    """Area under the ROC curve of each label, averaged over labels (unweighted).

    The AUC of a label is the probability that a random positive sample scores above a random
    negative one, a tie counting 1/2; computed from average ranks (Mann-Whitney U):
    ``(sum of positives' ranks - P(P+1)/2) / (P * Q)`` with P positives and Q negatives. This
    equals scikit-learn's ``roc_auc_score``, ties included.

    scores: [N, L] floating scores; targets: [N, L] {0,1} matrix.
    A label whose targets hold only one class (P = 0 or Q = 0) has no AUC: it is skipped, NaN in
    ``per_label``, and counted in ``num_skipped``; if every label is skipped, ValueError.

    Returns the mean AUC, or a ``PerLabelScore`` (mean, per_label, num_skipped) when
    ``return_per_label``.
    """
    fn = "mean_roc_auc"
    ranked_targets, first, last = _ranked_targets(fn, scores, targets)
    num_samples = ranked_targets.shape[1]
    # Every value of a run gets the run's mean 1-based rank.
    average_ranks = (first + last).double() / 2 + 1
    num_positive = ranked_targets.sum(dim=1)
    num_negative = num_samples - num_positive
    positive_rank_sum = (ranked_targets * average_ranks).sum(dim=1)
    # Mann-Whitney U: the positive-negative pairs in the right order, a tie counting 1/2.
    u_statistic = positive_rank_sum - num_positive * (num_positive + 1) / 2
    auc = u_statistic / (num_positive * num_negative)
    defined = (num_positive > 0) & (num_negative > 0)
    auc = torch.where(defined, auc, torch.nan)
    return _summarize(fn, auc, "holds only one class", return_per_label)


def average_precision(
    scores: torch.Tensor, targets: torch.Tensor, *, return_per_label: bool = False
) -> float | PerLabelScore:
    """Average precision of each label, averaged over labels (unweighted).

    AP = sum over thresholds t of (R(t) - R(t_prev)) * P(t), thresholds at the distinct score
    values from the highest down, where P(t) and R(t) are the precision and recall of predicting
    "positive" for scores >= t: scikit-learn's ``average_precision_score`` (no interpolation).
    Equivalently, the mean over positive samples of the precision at the threshold of their own
    score, so tied samples enter together.

    scores: [N, L] floating scores; targets: [N, L] {0,1} matrix.
    A label with no positive sample has no AP (recall is 0/0): it is skipped, NaN in
    ``per_label``, and counted in ``num_skipped``; if every label is skipped, ValueError.
    (scikit-learn scores such a label 0 and keeps it in its macro mean.)

    Returns the mean AP, or a ``PerLabelScore`` (mean, per_label, num_skipped) when
    ``return_per_label``.
    """
    fn = "average_precision"
    ranked_targets, first, _ = _ranked_targets(fn, scores, targets)
    num_samples = ranked_targets.shape[1]
    num_positive = ranked_targets.sum(dim=1)
    # Samples scoring >= s are those from the first of s's run up; the positives among them are
    # all positives minus those before the run.
    num_at_or_above = num_samples - first
    positives_before = (ranked_targets.cumsum(dim=1) - ranked_targets).gather(1, first)
    precision = (num_positive.unsqueeze(1) - positives_before) / num_at_or_above  # [L, N]
    ap = (ranked_targets * precision).sum(dim=1) / num_positive
    ap = torch.where(num_positive > 0, ap, torch.nan)
    return _summarize(fn, ap, "has no positive sample", return_per_label)


# ----------------------------------------------------------------------------- F1


class _ClassCounts(NamedTuple):
    """The counts every per-class figure comes from, each [C] int64."""

    true_positives: torch.Tensor
    num_predicted: torch.Tensor
    num_true: torch.Tensor
    macro_over_seen: bool
    """True: the macro average runs over the classes seen in targets or predictions only
    (scikit-learn's default label set); False: over all C classes."""


def _single_label_counts(fn: str, predictions, targets, num_classes: int | None):
    """Per-class (TP, predicted, true) counts [C] of [N] class indices; C is num_classes or
    the largest index seen + 1."""
    num_samples = predictions.shape[0]
    _check_class_indices(fn, "predictions", predictions, num_samples, num_classes)
    _check_class_indices(fn, "targets", targets, num_samples, num_classes)
    check_same_device(fn, "targets", targets, predictions)
    _check_not_empty(fn, "predictions", predictions)
    predictions, targets = predictions.long(), targets.long()
    if num_classes is None:
        num_classes = max(predictions.max().item(), targets.max().item()) + 1
    true_positives = torch.bincount(targets[predictions == targets], minlength=num_classes)
    num_predicted = torch.bincount(predictions, minlength=num_classes)
    num_true = torch.bincount(targets, minlength=num_classes)
    return true_positives, num_predicted, num_true


def _multilabel_counts(fn: str, predictions, targets, num_classes: int | None):
    """Per-label (TP, predicted, true) counts [L] of [N, L] {0,1} matrices."""
    predicted = _check_indicator(fn, "predictions", predictions, predictions.shape)
    relevant = _check_indicator(fn, "targets", targets, predictions.shape)
    check_same_device(fn, "targets", targets, predictions)
    if predictions.numel() == 0:
        raise ValueError(
            f"{fn}: predictions must have at least one sample and one label, "
            f"got shape {tuple(predictions.shape)}"
        )
    if num_classes is not None and num_classes != predictions.shape[1]:
        raise ValueError(
            f"{fn}: num_classes must equal the {predictions.shape[1]} columns of the "
            f"multi-label predictions, got {num_classes}"
        )
    return (predicted & relevant).sum(dim=0), predicted.sum(dim=0), relevant.sum(dim=0)


def _count_classes(fn: str, predictions, targets, num_classes) -> _ClassCounts:
    """Checks the arguments of ``f1_score`` and ``precision_recall_f1`` and counts per class."""
    if num_classes is not None:
        num_classes = _check_positive_int(fn, "num_classes", num_classes)
    check_tensor(fn, "predictions", predictions)
    if predictions.dim() == 1:
        counts = _single_label_counts(fn, predictions, targets, num_classes)
        # Without num_classes the label set is inferred, as scikit-learn infers it.
        return _ClassCounts(*counts, macro_over_seen=num_classes is None)
    if predictions.dim() == 2:
        return _ClassCounts(
            *_multilabel_counts(fn, predictions, targets, num_classes), macro_over_seen=False
        )
    raise ValueError(
        f"{fn}: predictions must have 1 dimension (class indices [N]) or 2 (a multi-label "
        f"{{0,1}} matrix [N, L]), got shape {tuple(predictions.shape)}"
    )


def _ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator in float64, 0 where the denominator is 0."""
    denominator = denominator.double()
    return torch.where(denominator > 0, numerator / denominator, 0.0)


def _per_class_figures(counts: _ClassCounts) -> PrecisionRecallF1:
    true_positives = counts.true_positives.double()
    return PrecisionRecallF1(
        precision=_ratio_or_zero(true_positives, counts.num_predicted),
        recall=_ratio_or_zero(true_positives, counts.num_true),
        # 2 TP + FP + FN = (TP + FP) + (TP + FN): predicted plus true counts.
        f1=_ratio_or_zero(2 * true_positives, counts.num_predicted + counts.num_true),
        support=counts.num_true,
    )


def _average_f1(counts: _ClassCounts, per_class_f1: torch.Tensor, average: str) -> float:
    """The "micro", "macro" or "weighted" F1 of ``f1_score``; 0 where its denominator is 0."""
    if average == "micro":
        denominator = (counts.num_predicted + counts.num_true).sum().item()
        return 2 * counts.true_positives.sum().item() / denominator if denominator > 0 else 0.0
    if average == "weighted":
        total_true = counts.num_true.sum().item()
        if total_true == 0:
            return 0.0
        return (per_class_f1 * counts.num_true).sum().item() / total_true
    if counts.macro_over_seen:
        seen = (counts.num_predicted + counts.num_true) > 0
        return per_class_f1[seen].mean().item() if seen.any() else 0.0
    return per_class_f1.mean().item()


def f1_score(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    average: str | None = "macro",
    num_classes: int | None = None,
) -> float | torch.Tensor:
    """F1 = 2 TP / (2 TP + FP + FN) per class, and its averages, as scikit-learn's ``f1_score``.

    Two kinds of input, told apart by their dimensions as scikit-learn does:
    - single-label: ``predictions``, ``targets`` [N] integer class indices. The classes are
      0 .. C-1 with C = ``num_classes``, or the largest index seen + 1 when it is None.
    - multi-label: ``predictions``, ``targets`` [N, L] {0,1} matrices; the classes are the L
      labels (``num_classes``, if given, must be L).

    A class with 2 TP + FP + FN = 0 (never true, never predicted) has F1 0, scikit-learn's
    ``zero_division`` default; the same holds for an average whose denominator is 0.

    average:
    - "micro": F1 of the TP, FP, FN summed over the classes (single-label: the accuracy).
    - "macro": unweighted mean of the per-class F1 over the label set: every class when the
      classes are given (``num_classes``, or the L columns of a multi-label matrix), otherwise
      only the classes that occur in ``targets`` or ``predictions`` (scikit-learn's default
      label set), so an index nobody used does not pull the mean down.
    - "weighted": mean of the per-class F1 weighted by each class's number of true samples.
    - None: the per-class F1, a [C] float64 tensor indexed by class.
    """
    fn = "f1_score"
    if average not in _F1_AVERAGES:
        raise ValueError(f"{fn}: average must be one of {_F1_AVERAGES}, got {average!r}")
    counts = _count_classes(fn, predictions, targets, num_classes)
    per_class_f1 = _per_class_figures(counts).f1
    if average is None:
        return per_class_f1
    return _average_f1(counts, per_class_f1, average)


def precision_recall_f1(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None
) -> PrecisionRecallF1:
    """Precision, recall, F1 and support of each class, as scikit-learn's
    ``precision_recall_fscore_support(average=None, zero_division=0)``.

    The inputs are those of ``f1_score``: [N] integer class indices (classes 0 .. C-1 with
    C = ``num_classes``, or the largest index seen + 1 when it is None), or [N, L] {0,1}
    matrices (C = L). A ratio whose denominator is 0 is 0: the precision of a class never
    predicted, the recall of a class never true, the F1 of a class neither.

    Returns ``PrecisionRecallF1(precision, recall, f1, support)``, each [C] on the input's
    device: float64, and int64 for support.
    """
    return _per_class_figures(_count_classes("precision_recall_f1", predictions, targets,
                                             num_classes))


def confusion_matrix(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """The [C, C] int64 matrix whose entry (i, j) counts the samples of true class i predicted
    as class j (rows: true class, columns: predicted), as scikit-learn's ``confusion_matrix``
    with ``labels=range(C)``.

    predictions, targets: [N] integer class indices in [0, num_classes). N = 0 gives zeros.
    A target unknown to the model (``UNKNOWN_TARGET``) has no row: leave those samples out.
    """
    fn = "confusion_matrix"
    num_classes = _check_positive_int(fn, "num_classes", num_classes)
    check_tensor(fn, "predictions", predictions, ndim=1)
    _check_class_indices(fn, "predictions", predictions, predictions.shape[0], num_classes)
    _check_class_indices(fn, "targets", targets, predictions.shape[0], num_classes)
    check_same_device(fn, "targets", targets, predictions)
    cells = targets.long() * num_classes + predictions.long()
    return torch.bincount(cells, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


# ----------------------------------------------------------------------------- report


def _report_ks(fn: str, ks, num_classes: int) -> list[int]:
    """The ks of a report, each capped at the number of classes, repeats dropped, in order."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence):
        raise TypeError(f"{fn}: ks must be a sequence of ints, got {type(ks).__name__}")
    if not ks:
        raise ValueError(f"{fn}: ks must hold at least one k, got an empty {type(ks).__name__}")
    capped = (min(_check_positive_int(fn, f"ks[{i}]", k), num_classes) for i, k in enumerate(ks))
    return list(dict.fromkeys(capped))


def _check_threshold(fn: str, threshold) -> float:
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not 0 < threshold < 1):
        raise ValueError(f"{fn}: threshold must be a number in (0, 1), got {threshold!r}")
    return float(threshold)


def _check_known_targets(fn: str, targets, num_samples: int, num_classes: int) -> torch.Tensor:
    """targets: [N] class indices in [0, num_classes) or UNKNOWN_TARGET. Returns [N] bool, True
    where the target is known."""
    _check_index_vector(fn, "targets", targets, num_samples)
    known = targets != UNKNOWN_TARGET
    bad = known & ((targets < 0) | (targets >= num_classes))
    if bad.any():
        raise ValueError(
            f"{fn}: targets must hold class indices in [0, {num_classes}) or {UNKNOWN_TARGET} "
            f"(a label unknown to the model), got {targets[bad][0].item()}"
        )
    return known


def classification_report(
    scores: torch.Tensor,
    targets: torch.Tensor,
    multilabel: bool,
    ks: Sequence[int] = (1, 3, 5),
    threshold: float = 0.5,
) -> dict:
    """Every figure of an evaluation, as a dict of Python numbers and lists (JSON-ready).

    Single-label (``multilabel=False``): scores [N, C] floating logits or probabilities (only
    their order matters), targets [N] integer class indices in [0, C) or ``UNKNOWN_TARGET``
    (-100: the item's label is unknown to the model). An unknown target counts as a miss in
    the accuracy and the top-K figures and is left out of the per-class figures. The
    prediction is the top-scored class, the lowest index among ties. Keys:
    - "multilabel" False, "items" N, "unknown_targets": how many targets are -100;
    - "accuracy": the fraction of the N items whose prediction is their target;
    - "f1_micro", "f1_macro", "f1_weighted": F1 averages (``f1_score``) over the known items,
      the macro one over the classes seen among their targets or predictions;
    - "P@k", "R@k", "Acc@k" for each k of ``ks`` (capped at C; repeats dropped): with one true
      label, P@k is hits / k, and R@k = Acc@k the fraction of items whose target is in their k
      top-scored classes;
    - "per_class": {"precision", "recall", "f1", "support"}, lists of C values indexed by class.

    Multi-label (``multilabel=True``): scores [N, C] logits, targets [N, C] {0,1}. A label is
    predicted where ``sigmoid(score) >= threshold``. Keys:
    - "multilabel" True, "items" N;
    - "mAP": ``average_precision`` of the scores, the mean over the labels with a positive
      (None when no label has one);
    - "subset_accuracy": the fraction of items whose predicted label set is exactly their own;
    - "f1_micro", "f1_macro", "f1_weighted": F1 averages of the predictions over all C labels;
    - "P@k", "R@k", "Acc@k" as ``precision_at_k``, ``recall_at_k`` (None when no item has a
      true label) and ``accuracy_at_k``;
    - "per_class" as above, of the predictions.

    Ratios whose denominator is 0 are 0, as scikit-learn's ``zero_division=0``.
    """
    fn = "classification_report"
    if not isinstance(multilabel, bool):
        raise TypeError(f"{fn}: multilabel must be a bool, got {type(multilabel).__name__}")
    threshold = _check_threshold(fn, threshold)
    _check_scores(fn, "scores", scores)
    num_samples, num_classes = scores.shape
    ks = _report_ks(fn, ks, num_classes)

    if multilabel:
        relevant = _check_indicator(fn, "targets", targets, scores.shape)
        check_same_device(fn, "targets", targets, scores)
        # float16 logits near 0 would round in a float16 sigmoid.
        logits = scores.to(torch.promote_types(scores.dtype, torch.float32))
        predicted = torch.sigmoid(logits) >= threshold
        counts = _ClassCounts(*_multilabel_counts(fn, predicted, relevant, None),
                              macro_over_seen=False)
        report = {
            "multilabel": True,
            "items": num_samples,
            "mAP": average_precision(scores, relevant) if relevant.any() else None,
            "subset_accuracy": (predicted == relevant).all(dim=1).double().mean().item(),
        }
    else:
        known = _check_known_targets(fn, targets, num_samples, num_classes)
        check_same_device(fn, "targets", targets, scores)
        # One true label per known item, none for an unknown one: the top-K figures then count
        # an unknown target as a miss.
        relevant = torch.zeros_like(scores, dtype=torch.bool).scatter_(
            1, targets.long().clamp(min=0).unsqueeze(1), known.unsqueeze(1)
        )
        predictions = scores.argmax(dim=1)  # the first maximal index, as the top-K sort
        if known.any():
            counts = _ClassCounts(
                *_single_label_counts(fn, predictions[known], targets[known], num_classes),
                macro_over_seen=True,
            )
        else:
            nothing = torch.zeros(num_classes, dtype=torch.int64, device=scores.device)
            counts = _ClassCounts(nothing, nothing, nothing, macro_over_seen=True)
        report = {
            "multilabel": False,
            "items": num_samples,
            "unknown_targets": num_samples - int(known.sum()),
            "accuracy": (predictions == targets).double().mean().item(),
        }

    figures = _per_class_figures(counts)
    for average in ("micro", "macro", "weighted"):
        report[f"f1_{average}"] = _average_f1(counts, figures.f1, average)
    num_relevant = relevant.sum(dim=1)
    for k, hits in zip(ks, _top_k_hit_counts(scores, relevant, ks)):
        report[f"P@{k}"] = _mean_precision(hits, k)
        # With one true label, recall is a hit or a miss.
        report[f"R@{k}"] = _mean_recall(hits, num_relevant) if multilabel else _hit_rate(hits)
        report[f"Acc@{k}"] = _hit_rate(hits)
    report["per_class"] = {name: getattr(figures, name).tolist() for name in figures._fields}
    return report
