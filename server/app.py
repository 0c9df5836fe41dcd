"""The Flower ServerApp: validate the config, build the shared arrays and the strategy, run
the rounds, write the results. A failed run still writes summary.json with status 'failed'."""

from __future__ import annotations

import random
import traceback
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import input_shape
from common.models import MultiTaskModel, build_encoder, count_parameters
from common.records import arrays_from_model, model_shared_keys
from server.results import RunResults
from server.rounds import run_rounds
from server.strategies import build_strategy

app = ServerApp()


def initial_model(cfg: RunConfig) -> MultiTaskModel:
    """The encoder as the server knows it (no heads: the server never sees any)."""
    shape = input_shape(cfg)
    encoder = build_encoder(
        cfg.architecture, cfg.encoder, shape, cfg.hidden, cfg.num_blocks, cfg.num_experts, cfg.seed
    )
    return MultiTaskModel(encoder, [], seed=cfg.seed)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    random.seed(cfg.seed)  # Flower's node sampling uses Python's global RNG
    torch.manual_seed(cfg.seed)
    out = Path(cfg.results_dir) / cfg.name
    results = RunResults(out, {**cfg.to_dict(), "run-name": cfg.name})
    log(INFO, "fedmtl | run '%s' -> %s", cfg.name, out.resolve())
    try:
        model = initial_model(cfg)
        keys = model_shared_keys(model, get_algorithm(cfg.algorithm))
        arrays = arrays_from_model(model, keys)
        strategy = build_strategy(cfg)
        run_rounds(
            grid,
            strategy,
            arrays,
            cfg,
            results,
            audit_path=str(out / "received.jsonl") if cfg.audit_received else None,
        )
    except Exception as err:
        log(ERROR, "fedmtl | run failed: %s", err)
        results.finish("failed", error=f"{type(err).__name__}: {err}")
        traceback.print_exc()
        raise
    results.finish(
        "completed",
        extra={"parameters": {"shared": count_parameters(model, keys)}},
    )
    log(INFO, "fedmtl | finished: %s", out / "summary.json")
