import math

import pytest
import torch

from wilss.conventions import IGNORE_INDEX
from wilss.metrics import ConfusionMatrix, per_class_table, summarize


def _example() -> ConfusionMatrix:
    # target rows: class 0 = 2 px, class 1 = 2 px, plus one void pixel predicted as 0.
    target = torch.tensor([[0, 0, IGNORE_INDEX], [1, 1, 0]])
    pred = torch.tensor([[0, 1, 0], [1, 1, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    return cm


def test_confusion_matrix_hand_computed():
    cm = _example()
    # GT 0: predicted 0 once, 1 twice; GT 1: predicted 1 twice.
    assert cm.mat.tolist() == [[1, 2, 0], [0, 2, 0], [0, 0, 0]]
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(1 / 3)   # TP 1 / (TP 1 + FN 2 + FP 0)
    assert iou[1].item() == pytest.approx(2 / 4)   # TP 2 / (TP 2 + FP 2)
    assert math.isnan(iou[2].item())               # neither GT nor prediction
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_ignore_and_out_of_range_targets_are_skipped():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 1, 0]), torch.tensor([IGNORE_INDEX, 7, 0]))
    assert cm.mat.tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError):
        cm.update(torch.tensor([5]), torch.tensor([0]))


def test_predicted_but_absent_class_has_zero_iou_and_reset():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert cm.iou().tolist() == [0.5, 0.0]
    cm.reduce_from_all_processes()  # no process group: a no-op
    cm.reset()
    assert int(cm.mat.sum()) == 0 and math.isnan(cm.pixel_accuracy())


def test_summarize_percent_old_excludes_background():
    iou = torch.tensor([0.5, 2 / 3, math.nan, 0.25], dtype=torch.float64)
    s = summarize(iou, old_classes=[0, 1, 2], new_classes=[3])
    assert s["old"] == pytest.approx(200 / 3)                      # class 1 only; 2 is NaN, 0 excluded
    assert s["new"] == pytest.approx(25.0)
    assert s["all"] == pytest.approx(100 * (0.5 + 2 / 3 + 0.25) / 3)
    s = summarize(iou, [1, 2], [3], include_background=False)
    assert s["all"] == pytest.approx(100 * (2 / 3 + 0.25) / 2)
    assert math.isnan(summarize(iou, [], [2])["new"])


def test_per_class_table():
    table = per_class_table(torch.tensor([0.5, 1.0]), ["background", "cat"])
    assert table == [("background", 50.0), ("cat", 100.0)]
    with pytest.raises(ValueError):
        per_class_table(torch.tensor([0.5]), ["a", "b"])
