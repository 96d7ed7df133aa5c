"""mmfast.report: the text table, the confusion-matrix CSV and the F1 chart of a
classification report; their content read back, and bad inputs."""

import csv
import re

import pytest
import torch

from mmfast import metrics
from mmfast.report import format_report, plot_report, write_confusion_csv

LABELS = ["cat", "dog", "red, green", "bird"]  # a comma, which the CSV must quote
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _single_label_report():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(60, 4, generator=g)
    targets = torch.randint(0, 4, (60,), generator=g)
    targets[:5] = metrics.UNKNOWN_TARGET
    return scores, targets, metrics.classification_report(scores, targets, multilabel=False)


def _multilabel_report():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(40, 4, generator=g)
    targets = (torch.rand(40, 4, generator=g) < 0.4).long()
    return metrics.classification_report(scores, targets, multilabel=True, ks=(1, 2))


# ----------------------------------------------------------------------------- table


def test_format_report_single_label_with_per_class():
    _, _, report = _single_label_report()
    text = format_report(report, LABELS, per_class=True)
    assert re.search(rf"^items\s+{report['items']}$", text, re.MULTILINE)
    assert re.search(r"^unknown targets\s+5$", text, re.MULTILINE)
    assert re.search(rf"^accuracy\s+{report['accuracy']:.4f}$", text, re.MULTILINE)
    assert re.search(rf"^F1 macro\s+{report['f1_macro']:.4f}$", text, re.MULTILINE)
    for k in (1, 3, 4):  # 5 capped at the 4 classes
        row = f"{report[f'P@{k}']:.4f}\\s+{report[f'R@{k}']:.4f}\\s+{report[f'Acc@{k}']:.4f}"
        assert re.search(rf"^\s+{k}\s+{row}$", text, re.MULTILINE)
    # One row per class, the largest support first.
    per_class = report["per_class"]
    rows = [line for line in text.splitlines() if line.startswith(tuple(LABELS))]
    assert len(rows) == len(LABELS)
    supports = [int(row.split()[-1]) for row in rows]
    assert supports == sorted(per_class["support"], reverse=True)
    for row in rows:
        index = next(i for i, label in enumerate(LABELS) if row.startswith(label))
        numbers = row[len(LABELS[index]):].split()
        assert numbers == [f"{per_class['precision'][index]:.4f}",
                           f"{per_class['recall'][index]:.4f}",
                           f"{per_class['f1'][index]:.4f}", str(per_class["support"][index])]


def test_format_report_multilabel_without_per_class():
    report = _multilabel_report()
    text = format_report(report, LABELS, per_class=False)
    assert re.search(rf"^mAP\s+{report['mAP']:.4f}$", text, re.MULTILINE)
    assert re.search(rf"^subset accuracy\s+{report['subset_accuracy']:.4f}$", text, re.MULTILINE)
    assert "accuracy " not in text.replace("subset accuracy", "")
    assert not any(label in text for label in LABELS)
    assert "precision" not in text


def test_format_report_undefined_values_read_n_a():
    report = metrics.classification_report(torch.randn(3, 2), torch.zeros(3, 2), True)
    text = format_report(report, ["a", "b"], per_class=True)
    assert re.search(r"^mAP\s+n/a$", text, re.MULTILINE)
    assert re.search(r"^\s+1\s+0\.0000\s+n/a\s+0\.0000$", text, re.MULTILINE)


def test_format_report_bad_inputs():
    _, _, report = _single_label_report()
    with pytest.raises(ValueError, match=r"format_report: labels must have 4 names \(one per "
                                         r"class\), got 3"):
        format_report(report, LABELS[:3], per_class=True)
    with pytest.raises(TypeError, match="format_report: labels must be a sequence of names"):
        format_report(report, "cat dog", per_class=True)
    with pytest.raises(TypeError, match="format_report: report must be a dict"):
        format_report([report], LABELS, per_class=False)
    without_classes = {key: value for key, value in report.items() if key != "per_class"}
    with pytest.raises(ValueError, match="format_report: report must have a 'per_class' dict"):
        format_report(without_classes, LABELS, per_class=True)
    format_report(without_classes, LABELS, per_class=False)  # the summary needs no classes


# ----------------------------------------------------------------------------- confusion CSV


def test_confusion_csv_round_trips(tmp_path):
    scores, targets, _ = _single_label_report()
    known = targets != metrics.UNKNOWN_TARGET
    matrix = metrics.confusion_matrix(scores.argmax(1)[known], targets[known], len(LABELS))
    path = tmp_path / "out" / "confusion.csv"  # the folder is made
    write_confusion_csv(path, matrix, LABELS)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\predicted", *LABELS]
    assert [row[0] for row in rows[1:]] == LABELS
    assert [[int(cell) for cell in row[1:]] for row in rows[1:]] == matrix.tolist()
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.csv"]  # no temporary


def test_confusion_csv_takes_nested_lists_and_overwrites(tmp_path):
    path = tmp_path / "confusion.csv"
    path.write_text("old")
    write_confusion_csv(path, [[3, 1], [0, 2]], ["a", "b"])
    assert path.read_text(encoding="utf-8").splitlines() == ["true\\predicted,a,b", "a,3,1",
                                                             "b,0,2"]


def test_confusion_csv_bad_inputs(tmp_path):
    path = tmp_path / "confusion.csv"
    with pytest.raises(ValueError, match=r"write_confusion_csv: matrix must be square \[C, C\], "
                                         r"got shape \(2, 3\)"):
        write_confusion_csv(path, torch.zeros(2, 3, dtype=torch.long), ["a", "b"])
    with pytest.raises(ValueError, match="write_confusion_csv: matrix must be square"):
        write_confusion_csv(path, [[1, 2], [3]], ["a", "b"])
    with pytest.raises(ValueError, match="write_confusion_csv: labels must have 2 names"):
        write_confusion_csv(path, torch.zeros(2, 2, dtype=torch.long), ["a"])
    assert not path.exists()


# ----------------------------------------------------------------------------- plot


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_plot_report_writes_a_png(tmp_path, kind):
    pytest.importorskip("matplotlib")
    report = _single_label_report()[2] if kind == "single" else _multilabel_report()
    path = tmp_path / "f1.png"
    plot_report(path, report, LABELS)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.png"]  # no temporary left


def test_plot_report_many_classes_and_other_formats(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(500, 150, generator=g)
    targets = torch.randint(0, 140, (500,), generator=g)  # 10 classes with no true item
    report = metrics.classification_report(scores, targets, multilabel=False)
    labels = [f"class {index}" for index in range(150)]
    plot_report(tmp_path / "f1.svg", report, labels, max_classes=20)
    assert b"<svg" in (tmp_path / "f1.svg").read_bytes()[:1000]
    plot_report(tmp_path / "f1.PNG", report, labels)
    assert (tmp_path / "f1.PNG").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_report_bad_inputs(tmp_path):
    pytest.importorskip("matplotlib")
    _, _, report = _single_label_report()
    with pytest.raises(ValueError, match=r"plot_report: path must end with one of .*\.png.*"
                                         r"got '.*f1\.txt'"):
        plot_report(tmp_path / "f1.txt", report, LABELS)
    with pytest.raises(ValueError, match="plot_report: labels must have 4 names"):
        plot_report(tmp_path / "f1.png", report, LABELS[1:])
    assert list(tmp_path.iterdir()) == []
