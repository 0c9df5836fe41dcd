"""What a ClientApp process keeps from one message to the next, and where it runs.

A simulation's actor serves many messages, one at a time, for many virtual clients. Building a
client's model seeds and initialises every layer again (about 2 ms of CPU per message for the
default model: more than the rest of the session set-up, and a few % of a small local round);
resetting a kept model to that same initial state costs about 0.3 ms. Nothing of a client is
kept: the model is reset to the state `build_model` gives before the session loads the
client's private state and the server's arrays into it.

`placement` says where a ClientApp runs (host, process, Ray node), so a simulation on a Ray
cluster can show which machine served which client.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import lru_cache

import torch

from client.train import build_model
from common.config import RunConfig
from common.models import MultiTaskModel
from common.tasks import TaskSpec


@lru_cache(maxsize=8)
def _kept_model(
    cfg: RunConfig,
    tasks: tuple[TaskSpec, ...],
    input_shape: tuple[int, ...],
    global_heads: bool,
    device: str,
) -> tuple[MultiTaskModel, dict[str, torch.Tensor]]:
    model = build_model(cfg, tasks, input_shape, global_heads=global_heads, device=device)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh_model(
    cfg: RunConfig,
    tasks: tuple[TaskSpec, ...],
    input_shape: tuple[int, ...],
    *,
    global_heads: bool = False,
    device: torch.device | str = "cpu",
) -> MultiTaskModel:
    """The model `build_model` would build, taken from this process's cache and reset.

    A process serves one message at a time (a Ray actor, a deployment's ClientApp process),
    so the model is valid until the next call with the same arguments in the same process.
    Under DP-SGD a fresh one is built: Opacus wraps and hooks the module it trains."""
    if cfg.privacy == "dp-sgd":
        return build_model(cfg, tasks, input_shape, global_heads=global_heads, device=device)
    key = (cfg, tuple(tasks), tuple(input_shape), global_heads, str(device))
    model, initial = _kept_model(*key)
    model.load_state_dict(initial)
    model.zero_grad(set_to_none=True)
    model.train()
    return model


def placement() -> dict[str, str | int]:
    """Where this ClientApp runs: host name, process id, and the Ray node id when it runs in
    a Ray actor ('' otherwise; Ray is never imported here)."""
    ray = sys.modules.get("ray")
    node = ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray-node": node}
