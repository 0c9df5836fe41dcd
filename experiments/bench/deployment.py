"""Section 5: deployment latency. The same config (3 clients) on Flower's Simulation Engine
and on a real loopback deployment (`deploy.local.LocalDeployment`: SuperLink + 3 SuperNodes),
insecure and with TLS + SuperNode authentication, and where a round's time goes there.

Before and after, measured the same way (`_rounds_summary`: seconds per round, per training
and per evaluation wave, from metrics.jsonl):

- `before`: what a deployment did without this project's changes, on a patched copy of the
  app (the tree is not touched): a separate evaluation wave every round
  (`piggyback-evaluation=false`), the ServerApp pulling replies every 3 s (Flower's
  `HttpGrid.send_and_receive`), no data cache (every ClientApp process partitions the data
  again), and Flower's default SuperExec task poll (1 s);
- `tls`, `insecure`: the defaults (one wave per round, 0.1 s pulls and polls, cached data);
- `tls_process`: the same with `--isolation process` (one long-lived SuperExec per node,
  started by `LocalDeployment`) instead of `subprocess`.

Where a message's time goes, two ways: the old one, a fresh interpreter that imports
`client.app` and loads the data (`spawn`, `imports`), now also from the data cache; and the
new one, from the timestamps every ClientApp reply carries when the run audits replies
(`received.jsonl`): server creates the message → the ClientApp process starts (SuperNode
poll, SuperExec poll, process launch) → handler ready (Python, Flower, the FAB, torch, our
imports, data, model, private state) → reply built (evaluation and training) → pulled by the
ServerApp (SuperNode's reply poll, the grid's pull). An idle SuperNode still polls the
SuperLink every 3 s (hard-coded in `flwr.supernode.start_client_internal`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.runs import REPO, STATE, stage_app
from experiments.bench.flower import BenchEngine, run_fedmtl
from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target, median

POLL_S = 0.1  # the product's grid pull and SuperExec poll (server.metered_grid, deploy.local)
# Variants of earlier runs of this section (patched copies polling every POLL_S), now the
# defaults; the report still renders saved results that hold them.
GRID_POLL_KEY = f"grid_poll_{POLL_S:g}s"
BOTH_POLL_KEY = f"grid_and_superexec_poll_{POLL_S:g}s"
FLOWER_GRID_PULL_S = 3.0  # HttpGrid.send_and_receive's sleep between pulls
# The patched copy of the app for `before`: (file, the line as it is, the line in the copy).
BEFORE_PATCHES: tuple[tuple[str, str, str], ...] = (
    (
        "server/metered_grid.py",
        f"PULL_INTERVAL = {POLL_S!r}",
        f"PULL_INTERVAL = {FLOWER_GRID_PULL_S!r}",
    ),
    ("client/app.py", "cache = cache_dir_for(node, cfg)", "cache = None"),
)
TARGET_ROUND_S = 8.0  # median deployment round, TLS + node auth, 3 nodes
TARGET_STARTUP_S = 1.0  # a ClientApp's fixed cost per message: process start -> handler ready
SPAWN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import client.app  # what a ClientApp process imports (torch, flwr, ...)
t1 = time.perf_counter()
from pathlib import Path
from common.config import parse_run_config
from common.datacache import client_data
cfg = parse_run_config(json.loads(sys.argv[1]))
cache = Path(sys.argv[2]) if len(sys.argv) > 2 else None
client_data(cfg, 0, cfg.num_clients, cache_dir=cache)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1}))
"""


def _spawn(overrides: dict[str, Any], *cache: str) -> dict[str, float]:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", SPAWN_SCRIPT, json.dumps(overrides), *cache],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row | {"process_s": time.perf_counter() - t}


def spawn_cost(overrides: dict[str, Any], repeats: int = 3) -> dict[str, Any]:
    """What one ClientApp process pays before training: interpreter, imports, data; the
    data built from scratch (`data_s`) and read from a warm data cache (`cached_data_s`)."""
    rows = [_spawn(overrides) for _ in range(repeats)]
    out = {k: median([r[k] for r in rows]) for k in rows[0]} | {"repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        _spawn(overrides, cache)  # fills the cache
        cached = [_spawn(overrides, cache) for _ in range(repeats)]
    out["cached_data_s"] = median([r["data_s"] for r in cached])
    out["cached_process_s"] = median([r["process_s"] for r in cached])
    return out


def import_breakdown(
    modules: tuple[str, ...] = (
        "torch",
        "scipy.optimize",
        "flwr_datasets",
        "datasets",
        "sklearn",
        "opacus",
    ),
) -> dict[str, float]:
    """Cumulative import seconds of heavy modules in a fresh `import client.app` plus the
    first data load, uncached (`python -X importtime`): which imports a lazy import saves."""
    script = (
        "import client.app\nfrom common.config import parse_run_config\n"
        "from common.federation import load_client_data\n"
        "load_client_data(parse_run_config({'num-clients': 3}), 0, 3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] in modules and parts[2] not in found:
            found[parts[2]] = int(parts[1]) / 1e6
    return found


def patched_app(dest: Path) -> Path | str:
    """A slim copy of the app as it was before this section's changes (`BEFORE_PATCHES`);
    the reason when a line to patch is not found. (Slim only changes how fast `flwr run`
    builds the FAB, not the rounds compared here.)"""
    stage_app(dest)
    for name, line, patched in BEFORE_PATCHES:
        path = dest / name
        text = path.read_text()
        if line not in text:
            return f"`{line}` not found in {name}"
        path.write_text(text.replace(line, patched))
    return dest


def message_stages(audit: Path) -> dict[str, Any]:
    """Medians over the messages of a run (from the ClientApp's timestamps in
    received.jsonl): dispatch (created -> process start), startup (process start -> handler
    ready: the fixed cost), work (ready -> reply built), back (reply -> pulled)."""
    spans: dict[str, list[float]] = {"dispatch": [], "startup": [], "work": [], "back": []}
    for line in audit.read_text().splitlines() if audit.exists() else []:
        entry = json.loads(line)
        t = entry.get("config", {}).get("timing")
        if not t or "process-start" not in t:
            continue
        spans["dispatch"].append(t["process-start"] - t["sent"])
        spans["startup"].append(t["ready"] - t["process-start"])
        spans["work"].append(t["reply"] - t["ready"])
        spans["back"].append(entry["pulled"] - t["reply"])
    out: dict[str, Any] = {f"{k}_median_s": median(v) for k, v in spans.items()}
    out["messages"] = len(spans["startup"])
    return out


def _deploy_run(
    ctx: BenchContext,
    tag: str,
    overrides: dict[str, Any],
    *,
    insecure: bool,
    app_dir: Path | None = None,
    isolation: str = "subprocess",
    task_poll_interval: float | None = POLL_S,
) -> dict[str, Any]:
    """Start a LocalDeployment, submit the app once (from `app_dir`, default a slim copy as
    `LocalDeployment.submit` uses) with replies audited (the ClientApp's timestamps), time
    it, stop it."""
    from deploy.local import LocalDeployment

    ctx.log(f"deployment: {tag}")
    run_dir = STATE / "bench-deploy" / f"{tag}-{os.getpid()}"
    results = ctx.section_dir("deployment")
    overrides = {
        **overrides,
        "results-dir": str(results.resolve()),
        "run-name": f"bench-deploy-{tag}",
        "audit-received": True,
    }
    t0 = time.perf_counter()
    with LocalDeployment(
        nodes=overrides["num-clients"],
        run_dir=run_dir,
        insecure=insecure,
        echo=False,
        isolation=isolation,
        task_poll_interval=task_poll_interval,
    ) as dep:
        up = time.perf_counter() - t0
        res_dir = results / overrides["run-name"]
        (res_dir / "metrics.jsonl").unlink(missing_ok=True)
        outcome = dep.submit(overrides, timeout=900, app_dir=app_dir)
        wall, status = outcome.wall_time_s, outcome.flower_status
        t1 = time.perf_counter()
    down = time.perf_counter() - t1
    metrics = res_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    audit = res_dir / "received.jsonl"
    stages = message_stages(audit)
    shutil.rmtree(run_dir, ignore_errors=True)
    return _rounds_summary(rows, wall, status, evaluation_waves(audit)) | {
        "up_s": up,
        "down_s": down,
        "isolation": isolation,
        "stages": stages,
    }


def evaluation_waves(audit: Path) -> set[int]:
    """The rounds that had an evaluation wave of their own (received.jsonl)."""
    lines = audit.read_text().splitlines() if audit.exists() else []
    return {e["round"] for e in map(json.loads, lines) if e["phase"] == "evaluate"}


def _rounds_summary(
    rows: list[dict[str, Any]], wall: float, status: str, eval_rounds: set[int] | None = None
) -> dict[str, Any]:
    """Per round and per wave: a round's training wave, and its evaluation wave where it has
    one of its own (`eval_rounds`; None: every round). A round whose evaluation rode on the
    next round's training wave has about 0 s of evaluation."""
    secs = [float(r["seconds"]) for r in rows]
    train = [float(r["train_seconds"]) for r in rows]
    evals = [s - t for s, t in zip(secs, train, strict=True)]
    own = [
        e
        for r, e in zip(rows, evals, strict=True)
        if eval_rounds is None or r["round"] in eval_rounds
    ]
    waves = train + own
    return {
        "status": status,
        "ok": status.startswith("finished:completed") and bool(rows),
        "run_wall_s": wall,
        "round_seconds": secs,
        "train_seconds": train,
        "eval_seconds": evals,
        "round_median_s": median(secs),
        "warm_round_median_s": median(secs[1:] or secs),
        "train_wave_median_s": median(train[1:] or train),
        "wave_median_s": median(waves),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Deployment rounds are all alike (every message starts a fresh process) except the
    last, which also has the final evaluation wave: the variants run 3 rounds (2 in quick
    mode), `before` and the insecure baseline 2; the simulation 3, so that it has warm
    rounds to compare with."""
    t_section = time.perf_counter()
    clients = 3
    base: dict[str, Any] = {"num-clients": clients}
    rounds = 2 if ctx.quick else 3
    if ctx.quick:
        base |= {"samples-per-client": 120, "local-epochs": 1}
    ctx.log("deployment: ClientApp process cost (fresh interpreter)")
    spawn = spawn_cost({"num-clients": clients}, repeats=2 if ctx.quick else 3)
    out: dict[str, Any] = {"section": "deployment", "config": base, "spawn": spawn}
    out["imports"] = import_breakdown()
    t = time.perf_counter()
    with BenchEngine() as engine:
        up = time.perf_counter() - t
        ctx.log("deployment: the same config in simulation")
        sim = run_fedmtl(
            engine,
            {
                **base,
                "num-server-rounds": 3,
                "run-name": "bench-deploy-sim",
                "audit-received": True,
            },
            ctx.section_dir("deployment"),
        )
        t = time.perf_counter()
    waves = evaluation_waves(sim.results_dir / "received.jsonl")
    sim_summary = _rounds_summary(sim.rounds, sim.sub.wall_s, sim.sub.status, waves)
    out["simulation"] = sim_summary | {"up_s": up, "down_s": time.perf_counter() - t}
    two = {**base, "num-server-rounds": 2}
    some = {**base, "num-server-rounds": rounds}
    app = patched_app(STATE / "bench-deploy" / "before-app")
    if isinstance(app, str):
        out["before"] = {"skipped": app}
    else:
        before = {**two, "piggyback-evaluation": False}
        out["before"] = _deploy_run(
            ctx, "before", before, insecure=False, app_dir=app, task_poll_interval=None
        )
        shutil.rmtree(app, ignore_errors=True)
    out["tls"] = _deploy_run(ctx, "tls", some, insecure=False)
    out["tls_process"] = _deploy_run(ctx, "tls-process", some, insecure=False, isolation="process")
    out["insecure"] = _deploy_run(ctx, "insecure", two, insecure=True)
    dep, tls = out["insecure"], out["tls"]
    out["ratio_round_deploy_vs_sim"] = dep["round_median_s"] / sim_summary["warm_round_median_s"]
    out["ratio_wave_tls_vs_insecure"] = tls["wave_median_s"] / dep["wave_median_s"]
    if "round_median_s" in out["before"]:
        out["ratio_round_before_vs_tls"] = out["before"]["round_median_s"] / tls["round_median_s"]
    out["targets"] = [
        Target(
            "median deployment round, TLS + node auth, 3 SuperNodes (loopback)",
            tls["round_median_s"],
            TARGET_ROUND_S,
            unit=" s",
            note=f"before: {out['before'].get('round_median_s', float('nan')):.1f} s",
        ).as_dict(),
        Target(
            "ClientApp fixed cost per message: process start → handler ready (median)",
            tls["stages"]["startup_median_s"],
            TARGET_STARTUP_S,
            unit=" s",
            note=f"{tls['stages']['messages']} messages; process isolation: "
            f"{out['tls_process']['stages']['startup_median_s']:.2f} s",
        ).as_dict(),
    ]
    out["seconds"] = time.perf_counter() - t_section
    return out


def breakdown_lines(s: dict[str, Any]) -> list[str]:
    """The report's lines on before/after and on where a message's time goes (nothing for
    results saved before these measurements existed)."""

    def f(value: Any, digits: int = 2) -> str:
        if not isinstance(value, (int, float)) or value != value:
            return "–"
        return f"{value:.{digits}f}"

    before = (
        f"before: evaluation wave every round, {FLOWER_GRID_PULL_S:g} s grid pull, "
        "Flower's SuperExec poll, no data cache"
    )
    rows = []
    for key, label in (
        ("before", before),
        ("tls", "after, subprocess isolation"),
        ("tls_process", "after, process isolation"),
    ):
        d = s.get(key)
        if not d or "stages" not in d:
            continue
        st = d["stages"]
        rows.append(
            f"| {label} | {f(d['round_median_s'], 1)} | {f(st['dispatch_median_s'])} | "
            f"{f(st['startup_median_s'])} | {f(st['work_median_s'])} | {f(st['back_median_s'])} | "
            f"{st['messages']} |"
        )
    if not rows:
        return []
    spawn = s.get("spawn", {})
    return [
        "TLS + node auth, per message (medians, from the ClientApp's own timestamps): "
        "dispatch = server creates the message → the ClientApp process starts (SuperNode "
        "poll, SuperExec poll, launch); startup = process start → handler ready (Python, "
        "Flower, the FAB, torch, data, model, private state); work = evaluation and "
        "training; back = reply built → pulled by the ServerApp.",
        "",
        "| variant | round s | dispatch s | startup s | work s | back s | messages |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Data in a fresh process: built {f(spawn.get('data_s'))} s, from the data cache "
        f"{f(spawn.get('cached_data_s'), 3)} s.",
        "",
    ]
