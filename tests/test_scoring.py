"""The NumPy metrics give scikit-learn's numbers to the last bit (float equality, not
closeness), on labels and predictions of the kinds and dtypes the tasks produce."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

from common.scoring import classification_metrics, regression_metrics


@pytest.mark.parametrize("seed", range(40))
def test_classification_metrics_equal_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(1, 300)), int(rng.integers(2, 11))
    y = rng.integers(0, classes, n)
    # predictions: mostly right, some classes never predicted, some absent from the labels
    pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, classes + 2, n))
    got = classification_metrics(y, pred)
    labels = np.union1d(y, pred)
    assert got["accuracy"] == float(accuracy_score(y, pred))
    expected = f1_score(y, pred, average="macro", labels=labels, zero_division=0)
    assert got["macro_f1"] == float(expected)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("dtypes", [("f4", "f4"), ("f8", "f4"), ("f8", "f8"), ("i8", "f4")])
def test_regression_metrics_equal_scikit_learns(seed: int, dtypes: tuple[str, str]) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 500))
    y = (rng.normal(9.0, 4.0, n) * (10 if dtypes[0] == "i8" else 1)).astype(dtypes[0])
    pred = (y + rng.normal(0.0, rng.random() * 3, n)).astype(dtypes[1])
    got = regression_metrics(y, pred)
    assert got["mae"] == float(mean_absolute_error(y, pred))
    assert got["rmse"] == float(np.sqrt(mean_squared_error(y, pred)))
    assert got["r2"] == float(r2_score(y, pred))


def test_r2_follows_scikit_learns_conventions_at_the_edges() -> None:
    constant = np.full(5, 3.0, dtype="f4")
    assert regression_metrics(constant, constant.copy())["r2"] == 1.0  # perfect
    off = constant + np.arange(5, dtype="f4")
    assert regression_metrics(constant, off)["r2"] == float(r2_score(constant, off)) == 0.0
    assert regression_metrics(np.ones(1, "f4"), np.zeros(1, "f4"))["r2"] == 0.0  # one example


def test_non_finite_predictions_are_refused_as_scikit_learn_refuses_them() -> None:
    y = np.arange(4, dtype="f4")
    with pytest.raises(ValueError, match="NaN or infinity"):
        regression_metrics(y, np.array([0, np.nan, 1, 2], dtype="f4"))
    with pytest.raises(ValueError):
        mean_absolute_error(y, np.array([0, np.nan, 1, 2], dtype="f4"))


def test_the_client_handler_imports_no_scikit_learn_to_score(tmp_path) -> None:
    """A fresh process that imports the ClientApp and scores every task kind has not
    imported scikit-learn."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, client.app\n"
        "from common.tasks import TaskSpec\n"
        "TaskSpec('a', 'multiclass', 3).metrics(np.array([0, 1, 2]), np.array([0, 2, 2]))\n"
        "TaskSpec('b', 'regression').metrics(np.ones(3, 'f4'), np.zeros(3, 'f4'))\n"
        "print('sklearn' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "False"
