"""Output of ``mmfast eval``: a text table, a confusion-matrix CSV and a per-class F1 chart of
the dict that ``mmfast.metrics.classification_report`` computes. Formatting only: every figure
comes from that dict (or from ``mmfast.metrics.confusion_matrix``); nothing is computed here.

Files are written atomically (``mmfast._io.atomic_path``): a reader never sees half of one.
matplotlib is imported by ``plot_report`` alone, so the rest works without it.
"""

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mmfast._io import atomic_path

__all__ = ["format_report", "plot_report", "write_confusion_csv"]

# The summary rows of a report, in print order; a key the report lacks is skipped.
_SUMMARY_ROWS = (
    ("items", "items"),
    ("unknown_targets", "unknown targets"),
    ("accuracy", "accuracy"),
    ("mAP", "mAP"),
    ("subset_accuracy", "subset accuracy"),
    ("f1_micro", "F1 micro"),
    ("f1_macro", "F1 macro"),
    ("f1_weighted", "F1 weighted"),
)
_TOP_K_KEY = re.compile(r"P@(\d+)")
_PER_CLASS_KEYS = ("precision", "recall", "f1", "support")


def _format_value(value) -> str:
    if value is None:  # a figure with no defined value (e.g. mAP with no positive label)
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _check_report(fn: str, report) -> None:
    if not isinstance(report, Mapping):
        raise TypeError(
            f"{fn}: report must be a dict from mmfast.metrics.classification_report, "
            f"got {type(report).__name__}"
        )


def _per_class(fn: str, report: Mapping, labels) -> dict[str, list]:
    """The report's per-class lists, checked against ``labels`` (one name per class)."""
    per_class = report.get("per_class")
    if not isinstance(per_class, Mapping) or any(key not in per_class for key in _PER_CLASS_KEYS):
        raise ValueError(
            f"{fn}: report must have a 'per_class' dict with keys {list(_PER_CLASS_KEYS)}, "
            f"as mmfast.metrics.classification_report returns"
        )
    _check_labels(fn, labels, len(per_class["support"]))
    return {key: list(per_class[key]) for key in _PER_CLASS_KEYS}


def _check_labels(fn: str, labels, num_classes: int) -> None:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise TypeError(f"{fn}: labels must be a sequence of names, got {type(labels).__name__}")
    if len(labels) != num_classes:
        raise ValueError(
            f"{fn}: labels must have {num_classes} names (one per class), got {len(labels)}"
        )


def _by_support(per_class: Mapping) -> list[int]:
    """Class indices by support, largest first; equal supports keep class order."""
    support = per_class["support"]
    return sorted(range(len(support)), key=lambda index: -support[index])


def format_report(report: Mapping, labels: Sequence[str], per_class: bool) -> str:
    """A readable table of ``report`` (from ``classification_report``): the summary figures,
    the top-K figures (one row per k), and, when ``per_class``, one row per class (label,
    precision, recall, F1, support), the largest support first. ``labels``: the class names,
    indexed by class (checked only when ``per_class``)."""
    fn = "format_report"
    _check_report(fn, report)
    rows = [(title, _format_value(report[key])) for key, title in _SUMMARY_ROWS if key in report]
    title_width = max((len(title) for title, _ in rows), default=0)
    lines = [f"{title:<{title_width}}  {value:>10}" for title, value in rows]

    ks = [int(match.group(1)) for key in report if (match := _TOP_K_KEY.fullmatch(key))]
    if ks:
        lines += ["", f"{'k':>5}  {'P@k':>8}  {'R@k':>8}  {'Acc@k':>8}"]
        lines += [
            f"{k:>5}  " + "  ".join(f"{_format_value(report.get(f'{name}@{k}')):>8}"
                                   for name in ("P", "R", "Acc"))
            for k in ks
        ]

    if per_class:
        table = _per_class(fn, report, labels)
        names = [str(label) for label in labels]
        label_width = max([len("label"), *(len(name) for name in names)])
        lines += ["", f"{'label':<{label_width}}  {'precision':>9}  {'recall':>8}  {'F1':>8}  "
                      f"{'support':>8}"]
        for index in _by_support(table):
            lines.append(
                f"{names[index]:<{label_width}}  {table['precision'][index]:>9.4f}  "
                f"{table['recall'][index]:>8.4f}  {table['f1'][index]:>8.4f}  "
                f"{table['support'][index]:>8}"
            )
    return "\n".join(lines) + "\n"


def write_confusion_csv(path: str | os.PathLike, matrix, labels: Sequence[str]) -> None:
    """Write a confusion matrix [C, C] (rows: true class, columns: predicted, as
    ``mmfast.metrics.confusion_matrix`` returns it; a tensor or nested sequences) as CSV: a
    header ``true\\predicted,<labels...>``, then one row per true class, its label first."""
    fn = "write_confusion_csv"
    if isinstance(matrix, torch.Tensor):
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"{fn}: matrix must be square [C, C], got shape {tuple(matrix.shape)}")
        rows = matrix.tolist()
    else:
        rows = [list(row) for row in matrix]
        if any(len(row) != len(rows) for row in rows):
            raise ValueError(
                f"{fn}: matrix must be square [C, C], got {len(rows)} rows of lengths "
                f"{sorted({len(row) for row in rows})}"
            )
    _check_labels(fn, labels, len(rows))
    names = [str(label) for label in labels]
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["true\\predicted", *names])
            writer.writerows([name, *row] for name, row in zip(names, rows))


def plot_report(
    path: str | os.PathLike, report: Mapping, labels: Sequence[str], *, max_classes: int = 60
) -> None:
    """Save a horizontal bar chart of the per-class F1 of ``report``, highest first, titled
    with the accuracy (single-label) or the mAP (multi-label) and the macro F1. The format comes
    from the suffix of ``path`` (.png, .pdf, .svg, ... as matplotlib supports).

    Classes with no true item (support 0) are left out: their F1 says nothing. With more than
    ``max_classes`` classes left, the chart shows the best and the worst ``max_classes // 2``.
    Needs matplotlib (the Agg backend, without touching pyplot's global state).
    """
    fn = "plot_report"
    _check_report(fn, report)
    table = _per_class(fn, report, labels)
    if isinstance(max_classes, bool) or not isinstance(max_classes, int) or max_classes < 2:
        raise ValueError(f"{fn}: max_classes must be an int >= 2, got {max_classes!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{fn}: needs matplotlib (pip install matplotlib)") from error
    canvas_formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = Path(path).suffix.lower().removeprefix(".")
    if suffix not in canvas_formats:
        raise ValueError(
            f"{fn}: path must end with one of {', '.join('.' + f for f in sorted(canvas_formats))}"
            f" (the image format), got {str(path)!r}"
        )

    shown = [index for index in range(len(labels)) if table["support"][index] > 0]
    shown.sort(key=lambda index: -table["f1"][index])  # stable: equal F1 keep class order
    num_with_support = len(shown)
    num_best, num_worst = max_classes // 2, max_classes - max_classes // 2
    if num_with_support > max_classes:
        shown = shown[:num_best] + shown[-num_worst:]

    if "accuracy" in report:
        headline = f"accuracy {_format_value(report['accuracy'])}"
    else:
        headline = f"mAP {_format_value(report.get('mAP'))}"
    title = f"Per-class F1: {headline}, macro F1 {_format_value(report.get('f1_macro'))}"
    if len(shown) < num_with_support:
        title += (f"\n(the best {num_best} and the worst {num_worst} of the {num_with_support} "
                  "classes with a true item)")
    elif num_with_support < len(labels):
        title += f"\n({len(labels) - num_with_support} classes with no true item left out)"

    figure = Figure(figsize=(7.0, 1.5 + 0.25 * max(len(shown), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(shown))
    axes.barh(positions, [table["f1"][index] for index in shown], color="tab:blue")
    axes.set_yticks(positions, [str(labels[index]) for index in shown], fontsize=8)
    axes.invert_yaxis()  # the best class on top
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("F1")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=suffix)
