"""The Flower ServerApp: validate the config, build the shared arrays and the strategy, run
the rounds, write the results. A failed run still writes summary.json with status 'failed'."""

from __future__ import annotations

import random
import sys
import traceback
from logging import ERROR, INFO, WARNING
from pathlib import Path

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import input_shape
from common.models import MultiTaskModel, count_parameters, encoder_for
from common.randomness import os_entropy_seed
from common.records import arrays_from_model, model_shared_keys
from server.checkpoint import clear_checkpoints, load_checkpoint, restore_strategy
from server.conflict_averse import wrap_aggregation
from server.failures import RUN_FAILED, one_line, strip_ansi
from server.metered_grid import MeteredGrid
from server.privacy import accountant_of, wrap_central_dp
from server.results import RunResults
from server.rounds import run_rounds
from server.secure_aggregation import SecAggTrainer
from server.strategies import build_strategy
from server.task_heads import TaskAwareHeads, initial_task_arrays

app = ServerApp()


def initial_model(cfg: RunConfig) -> MultiTaskModel:
    """The encoder as the server knows it (no heads: the server never sees any)."""
    return MultiTaskModel(encoder_for(cfg, input_shape(cfg)), [], seed=cfg.seed)


def tune_grid(grid: Grid, cfg: RunConfig) -> None:
    """In a simulation the grid is Flower's InMemoryGrid, which looks for replies every
    `pull_interval` seconds (0.1 by default: on average 0.05 s added to every message wave,
    the same order as a warm round of a small model); `grid-pull-interval` sets it. A
    deployment's grid is left as it is. (An InMemoryGrid exists only where its module is
    loaded: looked up there, so a deployment's ServerApp does not import the SuperLink.)"""
    grids = sys.modules.get("flwr.superlink.grid")
    if grids is not None and isinstance(grid, grids.InMemoryGrid):
        grid.pull_interval = cfg.grid_pull_interval


def seed_node_sampling(cfg: RunConfig) -> None:
    """Seed Python's global RNG, which Flower's node sampling draws from: the run seed, so a
    run's client sample replays, except where ε is amplified by that sample, which holds
    only while the sample is secret: then OS entropy."""
    random.seed(os_entropy_seed() if cfg.cdp_amplification != "none" else cfg.seed)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    tune_grid(grid, cfg)
    seed_node_sampling(cfg)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.results_dir) / cfg.name
    results = RunResults(out, {**cfg.to_dict(), "run-name": cfg.name, "digest": cfg.digest()})
    # Stated at the top of summary.json, not only in its config: a run whose DP noise the
    # server could regenerate has no ε guarantee.
    flags = {"insecure_seeded_dp_noise": cfg.dp_insecure_seeded_noise}
    log(INFO, "fedmtl | run '%s' -> %s", cfg.name, out.resolve())
    try:
        model = initial_model(cfg)
        algorithm = get_algorithm(cfg.algorithm)
        keys = model_shared_keys(model, algorithm, cfg.shared_layers)
        arrays = arrays_from_model(model, keys)
        strategy = wrap_aggregation(build_strategy(cfg), cfg)
        if cfg.privacy == "central-dp" and not cfg.secagg:  # SecAgg+ brings its own wrapper
            strategy = wrap_central_dp(strategy, cfg, cfg.num_clients)
        if algorithm.share_heads or algorithm.global_heads:
            strategy = TaskAwareHeads(strategy, initial_task_arrays(cfg))
        audit = out / "received.jsonl"
        audit.unlink(missing_ok=True)
        metered = MeteredGrid(grid, str(audit) if cfg.audit_received else None)
        secagg = SecAggTrainer(metered, context, cfg) if cfg.secagg else None
        accountant = accountant_of(secagg.dp_strategy if secagg else strategy)
        start, trained_clients, pending = 1, [], None
        if cfg.resume:
            ckpt = load_checkpoint(out / "checkpoints", cfg.digest())
            if ckpt is None:
                log(WARNING, "fedmtl | resume: no checkpoint in %s; starting at round 1", out)
            else:
                arrays, start = ckpt.arrays, ckpt.round + 1
                restore_strategy(strategy, ckpt, accountant)
                trained_clients = ckpt.trained_clients
                pending = ckpt.pending
                log(INFO, "fedmtl | resuming after round %d from %s", ckpt.round, ckpt.path)
        else:
            clear_checkpoints(out / "checkpoints")
        results.keep_rounds_until(start - 1)
        if pending is not None and any(r["round"] == pending["round"] for r in results.rounds):
            pending = None  # its line was written (the next round's replies came) before the stop
        run_rounds(
            metered,
            strategy,
            arrays,
            cfg,
            results,
            start_round=start,
            secagg=secagg,
            trained_clients=trained_clients,
            pending=pending,
        )
    except Exception as err:
        error = one_line(strip_ansi(f"{type(err).__name__}: {err}"))
        log(ERROR, "%s%s", RUN_FAILED, error)
        client_errors = getattr(err, "client_errors", [])
        results.finish(
            "failed",
            error=error,
            extra={**flags, **({"client_errors": client_errors} if client_errors else {})},
        )
        traceback.print_exc()
        raise
    results.finish(
        "completed",
        extra={"parameters": {"shared": count_parameters(model, keys)}, **flags},
    )
    log(INFO, "fedmtl | finished: %s", out / "summary.json")
