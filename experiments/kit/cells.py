"""When a cell of a study is finished: the one rule every study resumes and reports by.

A cell is finished when its record (the run's `summary.json`, or a study's own record with
the same fields) says `completed`, its config trained as the grid's config does
(`common.config.same_training`: the digest of what determines the training), with the same
round count and evaluation cadence, and the run reached that final round. A run with the
same digest but fewer rounds, a different config, or one that stopped early is not finished
and runs again; reports leave it out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config import RunConfig, same_training

_DEFAULTS = RunConfig()


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record (summary.json, ...), or None when it is absent or unreadable (a run
    killed while writing leaves nothing to resume from)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def trained_as(record: Mapping[str, Any], cfg: RunConfig) -> bool:
    """Whether the record's config trained as `cfg`: the same training digest, the same
    number of rounds, and the same evaluation cadence (the per-round metrics a report reads;
    `fraction-evaluate` only matters when not every round is a full evaluation). Keys the
    record lacks count as their defaults."""
    recorded = record.get("config") or {}
    eval_every = recorded.get("eval-every", _DEFAULTS.eval_every)
    fraction = recorded.get("fraction-evaluate", _DEFAULTS.fraction_evaluate)
    return (
        same_training(recorded, cfg)
        and recorded.get("num-server-rounds", _DEFAULTS.num_server_rounds) == cfg.num_server_rounds
        and eval_every == cfg.eval_every
        and (cfg.eval_every == 1 or fraction == cfg.fraction_evaluate)
    )


def finished(
    record: Mapping[str, Any] | None, cfg: RunConfig, *, reached: int | None = None
) -> bool:
    """The finished-cell rule: completed, `trained_as(record, cfg)`, and up to cfg's final
    round. `reached` is the last round the work reached when the record does not carry
    `final_round` (a record of work done in one piece, e.g. a transfer adaptation that
    trains its whole budget at once)."""
    if not record or record.get("status") != "completed":
        return False
    last = record.get("final_round") if reached is None else reached
    return last == cfg.num_server_rounds and trained_as(record, cfg)
