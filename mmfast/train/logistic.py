"""Paper 002's evaluation protocol: one L2-regularized logistic regression per concept on a
feature representation, fitted on the train split, scored by ROC AUC on a held-out split and
averaged over the concepts (``mmfast.metrics.mean_roc_auc``)."""

import numpy as np
import torch
import torch.nn.functional as F

from mmfast import metrics
from mmfast.ops._checks import check_finite, check_number


def _as_matrix(fn: str, name: str, value, rows: int | None = None) -> torch.Tensor:
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor or numpy array, "
                        f"got {type(value).__name__}")
    value = torch.as_tensor(value)
    if value.dim() != 2 or (rows is not None and value.shape[0] != rows):
        expected = f"[{rows}, ...]" if rows is not None else "[N, ...]"
        raise ValueError(f"{fn}: {name} must have shape {expected} (2 dimensions), "
                         f"got {tuple(value.shape)}")
    return value


def _check_features(fn: str, name: str, value, rows: int | None = None,
                    dim: int | None = None) -> torch.Tensor:
    features = _as_matrix(fn, name, value, rows)
    if not features.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got {features.dtype}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"{fn}: {name} must have {dim} columns like the fitted features, "
                         f"got {features.shape[1]}")
    check_finite(fn, name, features)
    return features.double()


def _check_targets(fn: str, name: str, value, rows: int) -> torch.Tensor:
    targets = _as_matrix(fn, name, value, rows)
    bad = (targets != 0) & (targets != 1)  # NaN included
    if bad.any():
        row, column = (int(index) for index in bad.nonzero()[0])
        raise ValueError(f"{fn}: {name} must hold only 0 and 1, got "
                         f"{targets[row, column].item()!r} at [{row}, {column}]")
    return targets.double()


class LogisticRegression:
    """Independent binary L2-regularized logistic regressions, one per target column, fitted
    together by full-batch L-BFGS in float64. Column k minimizes

        sum_i log(1 + exp(-s_ik (x_i . w_k + b_k))) + l2/2 |w_k|^2,   s_ik = 2 t_ik - 1,

    the bias unpenalized: scikit-learn's ``LogisticRegression(C=1/l2)`` objective (penalty
    "l2"), so ``l2=1`` is its default C=1. The columns share no parameter, so minimizing their
    sum minimizes each. With ``standardize``, ``x`` is first centred and scaled by the fit
    features' per-dimension mean and deviation (``mean``, ``scale``; ddof 0, as scikit-learn's
    ``StandardScaler``), and ``weight`` applies to the standardized features. L-BFGS stops when
    no gradient entry of the objective over N exceeds ``tolerance``: scikit-learn's ``tol``
    for its lbfgs solver, same scaling and default.

    After ``fit``: ``weight`` [K, D], ``bias`` [K] (float64), ``iterations`` run.
    """

    def __init__(self, l2: float = 1.0, standardize: bool = True, max_iter: int = 500,
                 tolerance: float = 1e-4):
        if not l2 > 0:
            raise ValueError(f"LogisticRegression: l2 must be > 0 (1/C), got {l2!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"LogisticRegression: max_iter must be an int >= 1, got "
                             f"{max_iter!r}")
        check_number("LogisticRegression", "tolerance", tolerance, 0, strict=True)
        self.l2, self.standardize = float(l2), standardize
        self.max_iter, self.tolerance = max_iter, tolerance
        self.weight = self.bias = self.mean = self.scale = None
        self.iterations = 0

    def fit(self, features, targets) -> "LogisticRegression":
        """``features`` [N, D] floating, ``targets`` [N, K] {0,1} (tensors or arrays); every
        column needs both classes."""
        fn = "LogisticRegression.fit"
        x = _check_features(fn, "features", features)
        # the targets follow the features (CUDA features with CPU or numpy targets)
        t = _check_targets(fn, "targets", targets, x.shape[0]).to(x.device)
        positives = t.sum(0)
        single = ((positives == 0) | (positives == t.shape[0])).nonzero().flatten().tolist()
        if single:
            raise ValueError(f"{fn}: every column of targets must hold both 0 and 1, but "
                             f"column(s) {single} hold one class")
        # Centring is free (the unpenalized bias absorbs the shift) and keeps L-BFGS well
        # conditioned: uncentred features couple every weight to the bias, and the shared line
        # search of the K problems then crawls. Scaling changes the penalty: only if asked.
        mean = x.mean(0)
        if self.standardize:
            self.mean, self.scale = mean, x.std(0, correction=0)
            self.scale[self.scale == 0] = 1.0  # a constant feature stays 0
            x = (x - self.mean) / self.scale
        else:
            x = x - mean
        num_rows = x.shape[0]
        weight = x.new_zeros(x.shape[1], t.shape[1], requires_grad=True)
        bias = x.new_zeros(t.shape[1], requires_grad=True)
        # The objective over N (scikit-learn's scaling too) keeps the gradient tolerance
        # meaningful whatever the number of rows.
        penalty = self.l2 / (2 * num_rows)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter,
                                      tolerance_grad=self.tolerance, tolerance_change=1e-14,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = torch.addmm(bias, x, weight)
            objective = (F.binary_cross_entropy_with_logits(logits, t, reduction="sum") / num_rows
                         + penalty * weight.square().sum())
            objective.backward()
            return objective

        optimizer.step(closure)
        self.iterations = optimizer.state[weight]["n_iter"]
        self.weight, self.bias = weight.detach().t().contiguous(), bias.detach()
        if not self.standardize:
            self.bias = self.bias - self.weight @ mean  # back to the uncentred features
        return self

    def decision_function(self, features) -> torch.Tensor:
        """Logits [N, K] float64: ``x . w_k + b_k`` (``x`` standardized first if so fitted)."""
        if self.weight is None:
            raise RuntimeError("LogisticRegression.decision_function: call fit first")
        x = _check_features("LogisticRegression.decision_function", "features", features,
                            dim=self.weight.shape[1]).to(self.weight.device)
        if self.standardize:
            x = (x - self.mean) / self.scale
        return torch.addmm(self.bias, x, self.weight.t())

    def predict_proba(self, features) -> torch.Tensor:
        """Per-column probabilities of class 1 [N, K]."""
        return torch.sigmoid(self.decision_function(features))


def concept_auc(train_features, train_targets, test_features, test_targets, l2: float = 1.0,
                standardize: bool = True, max_iter: int = 500) -> metrics.PerLabelScore:
    """Paper 002's protocol for one feature representation: a ``LogisticRegression`` per
    concept (column of the targets) fitted on the train split, its logits on the test split
    scored by ROC AUC. Returns ``mean_roc_auc``'s ``PerLabelScore(mean, per_label,
    num_skipped)``: a concept with one class in ``test_targets`` has no AUC (NaN, skipped)."""
    model = LogisticRegression(l2, standardize, max_iter).fit(train_features, train_targets)
    scores = model.decision_function(test_features)
    targets = _check_targets("concept_auc", "test_targets", test_targets, scores.shape[0])
    if targets.shape[1] != scores.shape[1]:
        raise ValueError(f"concept_auc: test_targets must have {scores.shape[1]} columns like "
                         f"train_targets, got {targets.shape[1]}")
    return metrics.mean_roc_auc(scores, targets.to(scores.device), return_per_label=True)
