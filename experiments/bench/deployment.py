"""Section 5: deployment latency. The same config (3 clients) on Flower's Simulation Engine
and on a real loopback deployment (`deploy.local.LocalDeployment`: SuperLink + 3 SuperNodes,
subprocess isolation), insecure and with TLS + SuperNode authentication, and where a round's
time goes there:

- each message starts a fresh ClientApp process on its node (SuperExec launches it): Python,
  torch, flwr and our imports, then the data (partitioning included: the per-process caches
  that make simulation cheap are empty every time); measured in a fresh interpreter here;
- polling: an idle SuperNode asks the SuperLink for work every 3 s (hard-coded in
  `flwr.supernode.start_client_internal`), its SuperExec looks for tasks every 1 s
  (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`), and the ServerApp's `HttpGrid.send_and_receive`
  pulls replies every 3 s (hard-coded), so a wave is rounded up to a multiple of 3 s;
- TLS: the insecure and TLS deployments are run back to back.

Two changes outside this package are measured on copies of the app and environment, not
in the tree: `MeteredGrid.send_and_receive` pulling every 0.1 s itself, and SuperExec's task
poll at 0.1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deploy.runs import REPO, STATE, stage_app
from experiments.bench.flower import BenchEngine, run_fedmtl
from experiments.bench.harness import BenchContext
from experiments.bench.stats import median

POLL_S = 0.1  # the patched MeteredGrid's pull interval and the SuperExec poll variant's
GRID_POLL_KEY = f"grid_poll_{POLL_S:g}s"
BOTH_POLL_KEY = f"grid_and_superexec_poll_{POLL_S:g}s"
GRID_ANCHOR = "replies = list(self.inner.send_and_receive(messages, timeout=timeout))"
GRID_PATCH = "replies = _send_and_receive_polling(self.inner, messages, timeout)"
GRID_HELPER = f'''

def _send_and_receive_polling(
    inner: Grid, messages: list[Message], timeout: float | None, interval: float = {POLL_S!r}
) -> list[Message]:
    """Push, then pull every `interval` s (deployment's HttpGrid sleeps 3 s between pulls)."""
    import time

    ids = set(inner.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while ids:
        got = list(inner.pull_messages(ids))
        replies += got
        ids -= {{m.metadata.reply_to_message_id for m in got}}
        if not ids or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(interval)
    return replies
'''
SPAWN_SCRIPT = """
import json, time
t0 = time.perf_counter()
import client.app  # what a ClientApp process imports (torch, flwr, scipy, ...)
t1 = time.perf_counter()
from common.config import parse_run_config
from common.federation import load_client_data
cfg = parse_run_config(json.loads(SYS_ARGV))
load_client_data(cfg, 0, cfg.num_clients)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1}))
"""


def spawn_cost(overrides: dict[str, Any], repeats: int = 3) -> dict[str, Any]:
    """What one ClientApp process pays before training: interpreter, imports, data."""
    rows = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", SPAWN_SCRIPT.replace("SYS_ARGV", repr(json.dumps(overrides)))],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - t
        rows.append(row)
    return {k: median([r[k] for r in rows]) for k in rows[0]} | {"repeats": repeats}


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
    first data load (`python -X importtime`): which imports a lazy import would save."""
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


def patched_app(dest: Path) -> Path | None:
    """A slim copy of the app whose MeteredGrid polls every POLL_S; None if the anchor moved.
    (Slim only changes how fast `flwr run` builds the FAB, not the rounds compared here.)"""
    stage_app(dest)
    grid = dest / "server" / "metered_grid.py"
    text = grid.read_text()
    if GRID_ANCHOR not in text:
        return None
    grid.write_text(text.replace(GRID_ANCHOR, GRID_PATCH) + GRID_HELPER)
    return dest


def _deploy_run(
    ctx: BenchContext,
    tag: str,
    overrides: dict[str, Any],
    *,
    insecure: bool,
    app_dir: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a LocalDeployment, submit the app once (from `app_dir`, default a slim copy as
    `LocalDeployment.submit` uses), time it, stop it."""
    from deploy.local import LocalDeployment

    ctx.log(f"deployment: {tag}")
    saved = {k: os.environ.get(k) for k in (env_extra or {})}
    os.environ.update(env_extra or {})  # flower_env() copies os.environ for every process
    run_dir = STATE / "bench-deploy" / f"{tag}-{os.getpid()}"
    results = ctx.section_dir("deployment")
    overrides = {
        **overrides,
        "results-dir": str(results.resolve()),
        "run-name": f"bench-deploy-{tag}",
    }
    try:
        t0 = time.perf_counter()
        with LocalDeployment(
            nodes=overrides["num-clients"], run_dir=run_dir, insecure=insecure, echo=False
        ) as dep:
            up = time.perf_counter() - t0
            res_dir = results / overrides["run-name"]
            (res_dir / "metrics.jsonl").unlink(missing_ok=True)
            outcome = dep.submit(overrides, timeout=900, app_dir=app_dir)
            wall, status = outcome.wall_time_s, outcome.flower_status
            t1 = time.perf_counter()
        down = time.perf_counter() - t1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    metrics = res_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    shutil.rmtree(run_dir, ignore_errors=True)
    return _rounds_summary(rows, wall, status) | {"up_s": up, "down_s": down}


def _rounds_summary(rows: list[dict[str, Any]], wall: float, status: str) -> dict[str, Any]:
    """Per round and per wave (a round is a training wave and an evaluation wave)."""
    secs = [float(r["seconds"]) for r in rows]
    train = [float(r["train_seconds"]) for r in rows]
    evals = [s - t for s, t in zip(secs, train, strict=True)]
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
        "wave_median_s": median(train + evals),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    """Deployment rounds are all alike (every message starts a fresh process), so the
    variants run 1 round (2 waves) and the insecure baseline 2; the simulation runs 3 so
    that it has warm rounds to compare with."""
    t_section = time.perf_counter()
    clients = 3
    base: dict[str, Any] = {"num-clients": clients}
    if ctx.quick:
        base |= {"samples-per-client": 120, "local-epochs": 1}
    ctx.log("deployment: ClientApp process cost (fresh interpreter)")
    spawn = spawn_cost({"num-clients": clients}, repeats=2 if ctx.quick else 3)
    imports = import_breakdown()
    out: dict[str, Any] = {"section": "deployment", "config": base, "spawn": spawn}
    out["imports"] = imports
    t = time.perf_counter()
    with BenchEngine() as engine:
        up = time.perf_counter() - t
        ctx.log("deployment: the same config in simulation")
        sim = run_fedmtl(
            engine,
            {**base, "num-server-rounds": 3, "run-name": "bench-deploy-sim"},
            ctx.section_dir("deployment"),
        )
        t = time.perf_counter()
    sim_summary = _rounds_summary(sim.rounds, sim.sub.wall_s, sim.sub.status)
    out["simulation"] = sim_summary | {"up_s": up, "down_s": time.perf_counter() - t}
    one = {**base, "num-server-rounds": 1}
    out["insecure"] = _deploy_run(
        ctx, "insecure", {**base, "num-server-rounds": 1 if ctx.quick else 2}, insecure=True
    )
    out["tls"] = _deploy_run(ctx, "tls", one, insecure=False)
    app = patched_app(STATE / "bench-deploy" / "patched-app")
    if app is None:
        out[GRID_POLL_KEY] = {"skipped": f"anchor not found: {GRID_ANCHOR}"}
    else:
        out[GRID_POLL_KEY] = _deploy_run(ctx, "grid-poll", one, insecure=True, app_dir=app)
        out[BOTH_POLL_KEY] = _deploy_run(
            ctx,
            "grid-superexec-poll",
            one,
            insecure=True,
            app_dir=app,
            env_extra={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": f"{POLL_S:g}"},
        )
        shutil.rmtree(app, ignore_errors=True)
    dep = out["insecure"]
    out["ratio_round_deploy_vs_sim"] = dep["round_median_s"] / sim_summary["warm_round_median_s"]
    out["ratio_wave_tls_vs_insecure"] = out["tls"]["wave_median_s"] / dep["wave_median_s"]
    for key in (GRID_POLL_KEY, BOTH_POLL_KEY):
        if "wave_median_s" in out.get(key, {}):
            out[f"ratio_wave_{key}_vs_insecure"] = out[key]["wave_median_s"] / dep["wave_median_s"]
    out["targets"] = []
    out["seconds"] = time.perf_counter() - t_section
    return out
