"""Peak memory of one simulated client on the `dataset = "hf"` path.

A client on the Hugging Face path must hold its own partition, not the data set: it loads
its partition through flwr-datasets (Arrow, memory-mapped), decodes its images once into
the on-disk data cache, builds its model, trains one round and evaluates. This section runs
exactly that (`client.app.open_session`, `train_session`, `evaluate_session`, the ClientApp
handlers' own steps) in a fresh process per measurement, on a generated data set in
`flwrlabs/celeba`'s layout, and reads the process's peak resident set from /proc:

- `baseline`: resident set after the imports and the server's round-1 arrays, just before
  the client starts (the interpreter, PyTorch, datasets, Flower);
- `peak`: the client's peak resident set above that baseline (the kernel's high-water mark,
  reset at the baseline through /proc/self/clear_refs);
- `decoded`: the partition as the client trains on it (float32 images and labels of its
  train, validation and test rows);
- `model`: the model's parameters three times over (weights, gradients, SGD momentum).

Target: peak ≤ 2 × decoded + model, for a cold client (first round on the machine: Arrow
conversion, decoding, cache write) and a warm one (a later process: the cache is read).

    python -m experiments.bench --only hfmemory
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.runs import REPO

if TYPE_CHECKING:
    from experiments.bench.harness import BenchContext

LIMIT = 1.0  # peak / (2 × decoded + model)
# Full size: 4 identities (clients) of 1,500 64×64 RGB images each, about 70 MiB of float32
# pixels per client; the ResNet and the CNN encoder.
FULL = {"identities": 4, "images": 1500, "size": 64, "encoders": ("cnn", "resnet")}
QUICK = {"identities": 3, "images": 40, "size": 32, "encoders": ("cnn",)}
MIB = 2**20


def run(ctx: BenchContext) -> dict[str, Any]:
    from experiments.celeba_like import celeba_like_schema, write_celeba_like

    t0 = time.perf_counter()
    size = QUICK if ctx.quick else FULL
    work = ctx.section_dir("hfmemory")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = Path(tmp)
        data = write_celeba_like(
            folder / "data", size["identities"], size["images"], (size["size"],) * 2, seed=0
        )
        schema = folder / "schema.json"
        schema.write_text(json.dumps(celeba_like_schema((size["size"],) * 2)))
        results = []
        for encoder in size["encoders"]:
            state = folder / f"state-{encoder}"
            env = {**os.environ, "HF_DATASETS_CACHE": str(folder / f"hf-cache-{encoder}")}
            for phase in ("cold", "warm"):  # the warm process finds the cold one's cache
                ctx.log(f"hfmemory: {encoder}, {phase} client")
                probe = [
                    sys.executable,
                    "-m",
                    "experiments.bench.hfmemory",
                    str(data),
                    str(schema),
                    str(state),
                    encoder,
                    str(size["identities"]),
                ]
                done = subprocess.run(
                    probe, env=env, cwd=REPO, capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    raise RuntimeError(f"hfmemory probe failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                r |= {"encoder": encoder, "phase": phase}
                r["bound"] = 2 * r["decoded"] + r["model"]
                r["ratio"] = r["peak"] / r["bound"]
                results.append(r)
    worst = max(results, key=lambda r: r["ratio"])
    return {
        "workload": {k: v for k, v in size.items() if k != "encoders"},
        "results": results,
        "seconds": time.perf_counter() - t0,
        "targets": [
            {
                "name": "HF client peak memory / (2 × decoded partition + model), worst case",
                "measured": worst["ratio"],
                "limit": LIMIT,
                "met": worst["ratio"] <= LIMIT,
                "note": f"{worst['encoder']}, {worst['phase']}",
            }
        ],
    }


def render(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """The section of docs/PERFORMANCE.md (called by the bench's report)."""
    from experiments.bench.text import fmt, table

    w = s.get("workload", {})
    rows = [
        [
            r["encoder"],
            r["phase"],
            str(r["rows"]),
            fmt(r["decoded"] / MIB, 1),
            fmt(r["model"] / MIB, 1),
            fmt(r["baseline"] / MIB, 0),
            fmt(r["peak"] / MIB, 1),
            fmt(r["bound"] / MIB, 1),
            fmt(r["ratio"], 2),
        ]
        for r in s.get("results", [])
    ]
    return [
        "## Memory of a client on the Hugging Face path",
        "",
        f"One simulated client of a generated `flwrlabs/celeba`-layout data set "
        f"({w.get('identities')} identities of {w.get('images')} "
        f"{w.get('size')}×{w.get('size')} RGB images, natural partitioning, one client per "
        "identity) loads its partition, trains one round and evaluates, in a fresh process: "
        "`cold` is the first client on the machine (Arrow conversion, image decoding, cache "
        "write), `warm` a later process that reads the cache. `decoded` is the partition as "
        "the client trains on it (float32), `model` the parameters three times over "
        "(weights, gradients, momentum), `baseline` the resident set after the imports, "
        "`peak` the client's peak resident set above it. Target: peak ≤ 2 × decoded + model.",
        "",
        *table(
            [
                "encoder",
                "client",
                "rows",
                "decoded MiB",
                "model MiB",
                "baseline MiB",
                "peak MiB",
                "2×decoded+model MiB",
                "peak/bound",
            ],
            rows,
        ),
    ]


# --- the probe: one client in this process -------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _load_what_clients_load_lazily() -> None:
    """Import the libraries a client imports on first use, and take one SGD step on a toy
    model (PyTorch loads its compiler stack on the first optimizer step): per-process costs
    that do not grow with the data, so they belong to the baseline."""
    import importlib

    import torch

    for name in ("datasets", "flwr_datasets", "PIL.Image", "sklearn.metrics", "pandas"):
        importlib.import_module(name)
    toy = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(toy.parameters(), lr=0.1, momentum=0.9)
    toy(torch.ones(2, 4)).sum().backward()
    opt.step()


def probe(data: str, schema: str, state: str, encoder: str, clients: int) -> dict[str, Any]:
    """One client (partition 0) in this process: imports first, then the measured part."""
    import numpy as np
    from flwr.app import Context, RecordDict

    from client.app import evaluate_session, open_session, train_session
    from common.algorithms import get_algorithm
    from common.config import parse_run_config
    from common.records import arrays_from_model, model_shared_keys
    from experiments.celeba_like import CELEBA_SUBSET
    from server.app import initial_model

    run_config = {
        "dataset": "hf",
        "hf-dataset": data,
        "hf-subset": CELEBA_SUBSET,
        "schema-file": schema,
        "partitioner": "natural",
        "num-clients": clients,
        "encoder": encoder,
        "local-epochs": 1,
        "lr": 0.01,  # the ResNet diverges at the default 0.05 on these images
        "device": "cpu",
        "results-dir": str(Path(state) / "results"),
    }
    cfg = parse_run_config(run_config)
    model = initial_model(cfg)
    received = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    del model
    node = {"partition-id": 0, "num-partitions": clients, "state-dir": state}
    context = Context(
        run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config
    )
    _load_what_clients_load_lazily()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts at the current RSS
    baseline = _status_kib("VmRSS") * 1024
    session = open_session(context, received)
    train_session(session, 1, 0.0)
    evaluate_session(session, 1)
    peak = _status_kib("VmHWM") * 1024
    d = session.data
    splits = (d.train, d.val, d.test)
    decoded = sum(
        np.asarray(s.x).nbytes + sum(np.asarray(v).nbytes for v in s.y.values()) for s in splits
    )
    params = sum(p.numel() * p.element_size() for p in session.model.parameters())
    return {
        "baseline": baseline,
        "peak": max(peak - baseline, 0),
        "decoded": decoded,
        "model": 3 * params,
        "rows": sum(len(s) for s in splits),
    }


if __name__ == "__main__":
    data_dir, schema_file, state_dir, enc, n = sys.argv[1:6]
    print(json.dumps(probe(data_dir, schema_file, state_dir, enc, int(n))))
