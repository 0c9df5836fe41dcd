"""The bench section that measures a Hugging Face client's memory (experiments/bench/
hfmemory.py): it runs the real client (load, train, evaluate) in fresh processes and its
numbers are what the report and its target are computed from."""

from __future__ import annotations

import pytest

from experiments.bench import hfmemory
from experiments.bench.harness import BenchContext
from experiments.bench.report import ORDER, RENDERERS

pytestmark = pytest.mark.slow


def test_the_quick_section_measures_a_cold_and_a_warm_client(tmp_path) -> None:
    ctx = BenchContext(quick=True)
    ctx.out_dir = tmp_path
    result = hfmemory.run(ctx)
    rows = result["results"]
    assert [(r["encoder"], r["phase"]) for r in rows] == [("cnn", "cold"), ("cnn", "warm")]
    size, images = hfmemory.QUICK["size"], hfmemory.QUICK["images"]
    for r in rows:
        assert r["rows"] == images  # the client's partition: one identity's images
        # float32 pixels of every row plus one float per attribute label, at least
        assert r["decoded"] >= images * 3 * size * size * 4
        assert r["baseline"] > 0 and r["peak"] > 0
        assert r["ratio"] == pytest.approx(r["peak"] / (2 * r["decoded"] + r["model"]))
    worst = max(r["ratio"] for r in rows)
    (target,) = result["targets"]
    assert target["measured"] == worst and target["met"] == (worst <= hfmemory.LIMIT)
    assert "hfmemory" in ORDER and RENDERERS["hfmemory"] is hfmemory.render
    text = "\n".join(hfmemory.render(result, {}))
    assert "| cnn | warm | 40 |" in text
    assert not list(tmp_path.glob("hfmemory/tmp*")), "the generated data set was left behind"
