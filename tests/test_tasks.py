"""Task specs: how predictions are scored."""

from __future__ import annotations

import numpy as np
import pytest

from common.tasks import TaskSpec

DIGIT = TaskSpec("digit", "multiclass", 10)


def test_macro_f1_of_perfect_predictions_on_some_of_the_classes_is_one() -> None:
    # A label-skewed client holds 5 of the 10 classes and predicts every example right.
    y = np.repeat([0, 2, 4, 6, 8], 4)
    metrics = DIGIT.metrics(y, y.copy())
    assert metrics["accuracy"] == 1.0
    assert metrics["macro_f1"] == 1.0


def test_macro_f1_of_perfect_binary_predictions_on_one_class_is_one() -> None:
    y = np.ones(6, dtype=np.int64)
    assert TaskSpec("flag", "binary", 2).metrics(y, y.copy())["macro_f1"] == 1.0


def test_predicting_an_absent_class_still_lowers_macro_f1() -> None:
    y = np.repeat(np.arange(5), 4)
    pred = y.copy()
    pred[0] = 7  # a class that is in no label
    # Classes 0-4 and 7 count: class 0 has F1 6/7 (3 of 4 found, none wrong), class 7 F1 0.
    assert DIGIT.metrics(y, pred)["macro_f1"] == pytest.approx((6 / 7 + 4) / 6)


def test_a_missed_class_lowers_macro_f1() -> None:
    y = np.repeat(np.arange(5), 4)
    pred = y.copy()
    pred[y == 4] = 3  # class 4 is never predicted: its F1 is 0
    f1_3 = 2 * 4 / (2 * 4 + 4)  # 4 right, 4 wrongly called 3
    assert DIGIT.metrics(y, pred)["macro_f1"] == pytest.approx((3 + f1_3 + 0) / 5)
