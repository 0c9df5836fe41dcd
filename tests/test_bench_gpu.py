"""The GPU bench section (experiments/bench/gpu.py): it imports and runs with PyTorch alone
(the GPU machine has no Flower, Ray, scikit-learn, ...), on the CPU here, and on CUDA where
there is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.bench import gpu
from experiments.bench.report import ORDER, RENDERERS

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("flwr", "flwr_datasets", "ray", "sklearn", "opacus", "datasets", "matplotlib")
# Run in a fresh interpreter in which these packages are absent, as they are there: a None
# in sys.modules makes `import x` fail and `importlib.util.find_spec(x)` say "not installed"
# (torch probes for some of them).
WITHOUT_FLOWER = f"""
import sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))
from experiments.bench import gpu
sys.exit(gpu.main(sys.argv[1:]))
"""


def test_the_section_runs_with_torch_alone_and_writes_its_result(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FLOWER, "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    measured = {(r["device"], r["amp"]) for r in result["results"]}
    assert {("cpu", "none"), ("cpu", "bf16")} <= measured
    for r in result["results"]:
        for loop in ("fedmtl", "bare"):
            assert r[loop]["samples_per_s"] > 0 and r[loop]["peak_mib"] > 0
        assert r["ratio"] == pytest.approx(
            r["fedmtl"]["samples_per_s"] / r["bare"]["samples_per_s"]
        )
    assert result["cuda"] == torch.cuda.is_available()
    assert bool(result["targets"]) == torch.cuda.is_available()  # the target is a GPU's


def test_the_section_is_in_the_bench_and_says_when_the_gpu_part_did_not_run() -> None:
    assert "gpu" in ORDER and RENDERERS["gpu"] is gpu.render
    row = {"samples_per_s": 100.0, "step_ms": 10.0, "peak_mib": 50.0, "seconds": [1.0]}
    section = {
        "workload": {"stages": 4, "depth": 2, "width": 32, "hidden": 128, "tasks": 40},
        "cuda": False,
        "gpu": None,
        "results": [{"device": "cpu", "amp": "bf16", "ratio": 0.8, "fedmtl": row, "bare": row}],
    }
    text = "\n".join(gpu.render(section, {}))
    assert "the GPU part was not run" in text
    assert "| cpu | bf16 | fedmtl | 100 | 10.00 | 50 | 0.80 |" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no CUDA device here")
def test_the_section_measures_cuda_and_checks_the_target_there() -> None:
    result = gpu.measure_all(quick=True, log=lambda _: None)
    cuda = [r for r in result["results"] if r["device"] == "cuda"]
    assert {r["amp"] for r in cuda} == {"none", "bf16"}
    assert [t["limit"] for t in result["targets"]] == [gpu.TARGET_RATIO] * 2
