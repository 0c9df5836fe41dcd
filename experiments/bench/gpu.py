"""The training step on CPU and GPU, without Flower: fedmtl's `train_epochs` (its loop, loss
weighting and bookkeeping) against a bare PyTorch loop on the same model, batch and precision.

Workload: the ResNet encoder on 32×32 RGB images with 40 binary heads (CelebA's attribute
shape), batch 256. For each device (CPU, and CUDA when present) and precision (fp32, bf16):
samples/s, time per step and peak memory of both loops, interleaved and repeated; the target
is fedmtl ≥ 90 % of the bare loop's throughput on a GPU.

This module imports torch, numpy and fedmtl's training code only (no Flower, Ray, Opacus,
scikit-learn, datasets or matplotlib), so it runs on a machine that has nothing but PyTorch:

    python -m experiments.bench.gpu --out results/bench/gpu.json           # full size
    python -m experiments.bench.gpu --quick --out gpu-quick.json          # smoke test
    python -m experiments.bench --only gpu                                 # in the bench
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from client.train import build_model, train_epochs
from common.config import RunConfig, parse_run_config
from common.device import autocast
from common.federation import Split
from common.tasks import TaskSpec
from common.weighting import EqualWeighting

if TYPE_CHECKING:
    from experiments.bench.harness import BenchContext

TARGET_RATIO = 0.90  # fedmtl's throughput over the bare loop's, on a GPU


@dataclass(frozen=True)
class Workload:
    """Model and batch of one measurement; `steps` per timed call, per device type."""

    image: tuple[int, int, int] = (3, 32, 32)
    tasks: int = 40
    batch: int = 256
    stages: int = 4
    depth: int = 2
    width: int = 32
    hidden: int = 128
    steps: dict[str, int] | None = None
    repeats: int = 3

    def steps_on(self, device: torch.device) -> int:
        return (self.steps or {}).get(device.type, 2)


FULL = Workload(steps={"cuda": 40, "cpu": 3})
# Smoke-test sizes (this machine's CI and the bench's --quick): same shapes of the data and
# heads, a much smaller network and batch.
QUICK = Workload(
    batch=16, stages=2, depth=1, width=8, hidden=32, steps={"cuda": 5, "cpu": 2}, repeats=1
)


def run_config(w: Workload, amp: str) -> RunConfig:
    return parse_run_config(
        {
            "encoder": "resnet",
            "num-blocks": w.stages,
            "resnet-depth": w.depth,
            "resnet-width": w.width,
            "hidden": w.hidden,
            "batch-size": w.batch,
            "amp": amp,
            "lr": 0.01,
        }
    )


def make_data(w: Workload, n: int, seed: int = 0) -> tuple[list[TaskSpec], Split]:
    """`n` random images and 40 binary attributes (the values do not matter for timing)."""
    rng = np.random.default_rng(seed)
    tasks = [TaskSpec(f"attr{i:02d}", "binary", 2) for i in range(w.tasks)]
    x = rng.standard_normal((n, *w.image), dtype=np.float32)
    y = {t.name: rng.integers(0, 2, n).astype(np.int64) for t in tasks}
    return tasks, Split(x, y)


def fedmtl_loop(cfg: RunConfig, tasks: list[TaskSpec], split: Split, device: torch.device):
    """One timed call: `train_epochs` for one epoch over `split` (its steps)."""
    model = build_model(cfg, tasks, cfg_shape(split), device=device)
    weighting = EqualWeighting([t.name for t in tasks])
    generator = torch.Generator().manual_seed(0)

    def call() -> None:
        train_epochs(model, split, weighting, cfg, epochs=1, generator=generator)

    return call


def bare_loop(cfg: RunConfig, tasks: list[TaskSpec], split: Split, device: torch.device):
    """The same model, batch and precision in the plainest PyTorch: data moved once, a
    random batch per step, the summed binary cross-entropies, SGD."""
    model = build_model(cfg, tasks, cfg_shape(split), device=device)
    names = [t.name for t in tasks]
    generator = torch.Generator().manual_seed(0)

    def call() -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        x = torch.from_numpy(split.x).to(device)
        y = torch.stack([torch.from_numpy(split.y[t]) for t in names], 1).float().to(device)
        model.train()
        order = torch.randperm(len(split), generator=generator).to(device)
        for idx in order.split(cfg.batch_size):
            with autocast(cfg.amp, device):
                out = model(x[idx])
                logits = torch.cat([out[t] for t in names], 1)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y[idx]) * len(names)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return call


def precision(amp: str) -> str:
    return "fp32" if amp == "none" else amp


def cfg_shape(split: Split) -> tuple[int, ...]:
    return tuple(split.x.shape[1:])


def timed(call: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB) of one call; CUDA's peak is the allocator's, the CPU's the
    process's peak resident set (it only grows, so it bounds the call from above)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return seconds, peak


def measure(w: Workload, device: torch.device, amp: str, log: Callable[[str], None]) -> dict:
    """fedmtl and bare, interleaved `repeats` times after one warm-up call each."""
    cfg = run_config(w, amp)
    steps = w.steps_on(device)
    tasks, split = make_data(w, steps * w.batch)
    loops = {
        "fedmtl": fedmtl_loop(cfg, tasks, split, device),
        "bare": bare_loop(cfg, tasks, split, device),
    }
    for call in loops.values():
        call()  # warm-up: kernels, cuDNN's choices, the allocator
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    peaks: dict[str, float] = dict.fromkeys(loops, 0.0)
    for _ in range(w.repeats):
        for name, call in loops.items():
            s, peak = timed(call, device)
            seconds[name].append(s)
            peaks[name] = max(peaks[name], peak)
    rows = {}
    for name, values in seconds.items():
        best = statistics.median(values)
        rows[name] = {
            "samples_per_s": steps * w.batch / best,
            "step_ms": 1000 * best / steps,
            "peak_mib": peaks[name],
            "seconds": values,
        }
        log(
            f"{device.type} {amp:>4} {name:>6}: {rows[name]['samples_per_s']:9.1f} samples/s, "
            f"{rows[name]['step_ms']:8.2f} ms/step, peak {peaks[name]:8.1f} MiB"
        )
    ratio = rows["fedmtl"]["samples_per_s"] / rows["bare"]["samples_per_s"]
    return {"device": device.type, "amp": amp, "steps": steps, "ratio": ratio, **rows}


def measure_all(quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (device, precision) pair this machine has; the target on CUDA only."""
    t0 = time.perf_counter()
    w = QUICK if quick else FULL
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results = [measure(w, d, amp, log) for d in devices for amp in ("none", "bf16")]
    targets = [
        {
            "name": f"fedmtl / bare loop throughput, CUDA, {precision(r['amp'])}",
            "measured": r["ratio"],
            "limit": TARGET_RATIO,
            "higher_is_better": True,
            "met": r["ratio"] >= TARGET_RATIO,
        }
        for r in results
        if r["device"] == "cuda"
    ]
    return {
        "workload": asdict(w),
        "quick": quick,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "results": results,
        "targets": targets,
        "seconds": time.perf_counter() - t0,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """The bench's entry point (`python -m experiments.bench --only gpu`)."""
    return measure_all(ctx.quick, ctx.log)


def render(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """The section of docs/PERFORMANCE.md (called by the bench's report)."""
    from experiments.bench.report import fmt, table

    w = s.get("workload", {})
    where = f"CUDA ({s['gpu']})" if s.get("cuda") else "CPU only: **the GPU part was not run**"
    rows = []
    for r in s.get("results", []):
        for loop in ("fedmtl", "bare"):
            rows.append(
                [
                    r["device"],
                    precision(r["amp"]),
                    loop,
                    fmt(r[loop]["samples_per_s"], 0),
                    fmt(r[loop]["step_ms"], 2),
                    fmt(r[loop]["peak_mib"], 0),
                    fmt(r["ratio"], 2) if loop == "fedmtl" else "",
                ]
            )
    return [
        "## GPU: the training step without Flower",
        "",
        f"ResNet encoder ({w.get('stages')} stages × {w.get('depth')} blocks, width "
        f"{w.get('width')}, hidden {w.get('hidden')}) on "
        f"{'×'.join(str(d) for d in w.get('image', ()))} images with "
        f"{w.get('tasks')} binary heads, batch {w.get('batch')}. Measured on: {where}. "
        "`fedmtl` is `client.train.train_epochs` (equal weighting, its loss bookkeeping); "
        "`bare` is a plain PyTorch loop on the same model, batch and precision; both start "
        "from host arrays and move them to the device once per call. Median of "
        f"{w.get('repeats')} interleaved calls after a warm-up; CPU peak memory is the "
        "process's peak resident set. `python -m experiments.bench.gpu` runs it with "
        "PyTorch alone.",
        "",
        *table(
            ["device", "precision", "loop", "samples/s", "ms/step", "peak MiB", "fedmtl/bare"],
            rows,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--out", type=Path, default=Path("results/bench/gpu.json"))
    args = parser.parse_args(argv)
    result = measure_all(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
