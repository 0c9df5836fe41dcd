"""The same federated training without Flower: an in-process loop over the same clients,
calling the same client training function. It is the physical-limit reference for the
simulation's overhead (wall-time ratio) and a quick way to try hyperparameters."""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import numpy as np
import torch

from client.train import build_model, build_weighting, evaluate, local_round
from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import dataset_tasks
from common.federation import load_client_data
from common.metric_names import HEADLINE_METRICS
from common.records import model_shared_keys
from server.metrics import per_task


def run_bare(cfg: RunConfig) -> dict[str, Any]:
    """FedAvg of the shared keys over all clients each round; returns per-round metrics."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n = cfg.num_clients
    algorithm = get_algorithm(cfg.algorithm)
    if algorithm.share_heads or algorithm.global_heads:
        raise ValueError(
            f"the bare loop averages the encoder only; algorithm '{cfg.algorithm}' federates "
            "heads too (use the simulation)"
        )
    clients = []
    for cid in range(n):
        data = load_client_data(cfg, cid, n)
        model = build_model(cfg, data.tasks, data.input_shape)
        weighting = build_weighting(cfg, data.task_names, dataset_tasks(cfg), cid)
        personal = copy.deepcopy(model) if algorithm.schedule == "ditto" else None
        clients.append((data, model, weighting, personal))
    keys = model_shared_keys(clients[0][1], algorithm, cfg.shared_layers)
    shared = {k: clients[0][1].state_dict()[k].clone() for k in keys}
    rounds = []
    for rnd in range(1, cfg.num_server_rounds + 1):
        updates, weights = [], []
        for data, model, weighting, personal in clients:
            model.load_state_dict(shared, strict=False)
            stats = local_round(model, data, weighting, cfg, rnd, algorithm, personal=personal)
            updates.append({k: model.state_dict()[k].clone() for k in keys})
            weights.append(stats.num_examples)
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        shared = {k: sum(float(wi) * u[k] for wi, u in zip(w, updates, strict=True)) for k in keys}
        row: dict[str, Any] = {"round": rnd}
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
            per_client = {}
            for data, model, _, personal in clients:
                model.load_state_dict(shared, strict=False)
                model = personal if personal is not None else model
                per_client[str(data.client_id)] = {
                    task: {
                        f"{split}/{m}": v
                        for split, res in (
                            ("val", evaluate(model, data.val, data.tasks)),
                            ("test", evaluate(model, data.test, data.tasks)),
                        )
                        for m, v in res[task].items()
                    }
                    | {"n": float(len(data.test))}
                    for task in data.task_names
                }
            row["per_task"] = per_task(per_client)
            row["per_client"] = per_client
        rounds.append(row)
    return {"rounds": rounds, "wall_time_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    from deploy.runs import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--run-config", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = parse_run_config(parse_overrides(args.run_config))
    out = run_bare(cfg)
    final = out["rounds"][-1]["per_task"]
    print(
        json.dumps(
            {
                t: {
                    k: round(v["mean"], 4)
                    for k, v in m.items()
                    if k.startswith("test/") and k.split("/")[1] in HEADLINE_METRICS
                }
                for t, m in final.items()
            }
        )
    )
    print(f"wall time {out['wall_time_s']:.1f}s")


if __name__ == "__main__":
    main()
