"""The round loop: Flower's strategy decides whom to send what and how to aggregate; this
loop adds what a long-running federation needs around it: reply checks, failure counts,
byte counts (measured on the messages by `MeteredGrid`), evaluation cadence, a metrics line,
the saved arrays and a checkpoint every round. Under `secagg`, the training phase is Flower's
SecAgg+ workflow instead (see `server.secure_aggregation`).

One message wave per round (`piggyback-evaluation`): round r's full evaluation uses round
r's aggregated model with each client's private state after round r's training, which is
exactly what a client holds when round r+1's training message arrives. So that message asks
for the evaluation (`evaluate-round`), the client evaluates before it trains, and round r's
metrics line is written, with the same numbers a separate evaluation wave would give, as
soon as round r+1's replies are in (before they are aggregated, so a failing round r+1
still leaves round r's line). Until then round r's line waits in round r's checkpoint; a
resume writes it from there. A separate evaluation wave remains where no training wave
follows or reaches every client: the last round, a run stopped early (privacy budget),
training that samples clients (`fraction-train` < 1), SecAgg+ (legacy messages), and the
sampled evaluations of `fraction-evaluate`."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from common.compression import decompress_reply
from common.config import RunConfig
from common.randomness import warn_seeded_noise
from common.records import EVALUATE_ROUND, EVALUATION_METRICS, EVALUATION_TASKS, TASK_ARRAYS
from common.resume import STATE_MISSING, TRAINED_CLIENTS, encode_clients
from server.affinity import round_affinity
from server.checkpoint import save_checkpoint
from server.failures import describe, group_failures
from server.metered_grid import MeteredGrid
from server.metrics import TASK_RECORD, per_client, per_task
from server.privacy import accountant_of, check_budget, privacy_after_round, release, unreleasable
from server.results import RunResults, headline
from server.validation import Rejection, ReplyValidator, client_of

# A row of metrics.jsonl whose evaluation is still to come (round r's, evaluated by the
# clients in round r+1's training wave): written as soon as it arrives.
Row = dict[str, Any]
TAIL = ("bytes_up", "bytes_down", "seconds")  # the last keys of a row, as always


class RoundFailed(RuntimeError):
    """Too few usable replies were left in a round; `client_errors` groups the rejected
    replies by reason (`server.failures.group_failures`), for summary.json."""

    def __init__(self, message: str, client_errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.client_errors = client_errors or []


@dataclass
class TrainOutcome:
    """What one training phase produced, whatever protocol ran it."""

    arrays: ArrayRecord
    clients: int
    failures: int
    train_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    trained_clients: list[str] = field(default_factory=list)  # they now hold private state


def flower_train_phase(
    grid: MeteredGrid,
    strategy: Strategy,
    arrays: ArrayRecord,
    rnd: int,
    cfg: RunConfig,
    validator: ReplyValidator,
    extra_config: dict[str, Any] | None = None,
    on_evaluation: Callable[[dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Configure, send, validate every reply, aggregate with the Flower strategy. When the
    config names an `evaluate-round`, the replies carry that round's evaluation: it is
    checked and handed to `on_evaluation` before this round's outcome is decided."""
    config = ConfigRecord({"lr": cfg.lr, "local-epochs": cfg.local_epochs, **(extra_config or {})})
    messages = list(strategy.configure_train(rnd, arrays, config, grid))
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    for msg in replies:  # bytes were counted as received; strategies see float32 arrays
        if not msg.has_error() and (problem := decompress_reply(msg.content, arrays)):
            log(WARNING, "fedmtl | round %d: node %d: %s", rnd, msg.metadata.src_node_id, problem)
    live = set(grid.get_node_ids())
    good, rejected = validator.check_train(
        rnd, replies, arrays, sent_heads=getattr(strategy, "task_arrays", None), live_nodes=live
    )
    if on_evaluation is not None and EVALUATE_ROUND in config:
        evaluated = int(config[EVALUATE_ROUND])
        outcome = piggybacked_evaluation(strategy, evaluated, messages, replies, validator, live)
        on_evaluation(outcome)
    missing = len(messages) - len(replies)
    if len(good) < min(cfg.min_nodes, len(messages)):
        groups = group_failures(rejected)
        reasons = [describe(groups)] if groups else []
        if missing:
            reasons.append(f"{missing} client(s) sent no reply within {cfg.round_timeout:g}s")
        raise RoundFailed(
            f"round {rnd}: {len(good)} usable training replies of {len(messages)}, fewer than "
            f"min-nodes = {cfg.min_nodes}; " + "; ".join(reasons),
            groups,
        )
    log_rejections(rnd, "training updates", rejected)
    extra: dict[str, Any] = {"rejected": [r.as_dict() for r in rejected], "no_reply": missing}
    problems = [f"client {r.client}: {r.reason}" for r in rejected]
    problems += [f"{missing} client(s) sent no reply"] if missing else []
    skipped = unreleasable(strategy, len(good), problems)
    new_arrays, metrics = (None, None) if skipped else release(strategy, rnd, good)
    if new_arrays is None:
        extra["skipped"] = skipped or "the strategy aggregated nothing"
    eps = {
        client_of(m): float(m.content[TASK_RECORD]["dp-epsilon"])
        for m in good
        if "dp-epsilon" in m.content.config_records.get(TASK_RECORD, {})
    }
    if eps:
        extra["dp_epsilon"] = eps  # cumulative ε per client (sample-level DP-SGD)
    affinity = round_affinity([m.content[TASK_RECORD] for m in good], validator.tasks)
    if affinity:
        extra["affinity"] = affinity  # task x task, over the clients holding both tasks
    return TrainOutcome(
        arrays=new_arrays if new_arrays is not None else arrays,
        clients=len(good),
        failures=len(rejected) + missing,
        train_loss=float(metrics["train-loss"]) if metrics and "train-loss" in metrics else None,
        extra=extra,
        trained_clients=[c for m in good if (c := client_of(m)).isdigit()],
    )


def evaluation_messages(
    strategy: Strategy, arrays: ArrayRecord, rnd: int, grid: MeteredGrid, *, full: bool
) -> list[Message]:
    """Every client (full evaluation) or the strategy's sample (`fraction-evaluate`)."""
    if not full:
        return list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd})})
    heads = getattr(strategy, "task_arrays", None)
    if heads is not None:
        content[TASK_ARRAYS] = heads
    return [
        Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
        for node in sorted(grid.get_node_ids())
    ]


def evaluate_phase(
    grid: MeteredGrid,
    strategy: Strategy,
    arrays: ArrayRecord,
    rnd: int,
    cfg: RunConfig,
    full: bool,
    validator: ReplyValidator,
) -> dict[str, Any]:
    """An evaluation wave: every client (full) or the strategy's sample."""
    msgs = evaluation_messages(strategy, arrays, rnd, grid, full=full)
    replies = list(grid.send_and_receive(msgs, timeout=cfg.round_timeout))
    live = set(grid.get_node_ids())
    return evaluation_outcome(strategy, rnd, len(msgs), replies, validator, live, full=full)


def piggybacked_evaluation(
    strategy: Strategy,
    rnd: int,
    messages: list[Message],
    replies: list[Message],
    validator: ReplyValidator,
    live: set[int],
) -> dict[str, Any]:
    """Round `rnd`'s full evaluation from the training replies that carry it."""
    evaluations: list[Message] = []
    missing: list[Rejection] = []
    for msg in replies:
        evaluation = msg if msg.has_error() else evaluation_reply(msg)
        if evaluation is None:
            reason = f"its training reply carries no valid evaluation of round {rnd}"
            missing.append(Rejection(msg.metadata.src_node_id, client_of(msg), reason))
        else:
            evaluations.append(evaluation)
    return evaluation_outcome(
        strategy, rnd, len(messages), evaluations, validator, live, full=True, rejected=missing
    )


def evaluation_reply(train_reply: Message) -> Message | None:
    """The evaluation a training reply carries, as the evaluation reply it stands for (same
    node, same records), for the same checks and aggregation; None if it carries none or
    its metrics are not numbers."""
    records = train_reply.content.config_records
    if EVALUATION_METRICS not in records or EVALUATION_TASKS not in records:
        return None
    try:  # its keys are checked with the evaluation reply's (`metrics_problem`)
        metrics = MetricRecord(dict(records[EVALUATION_METRICS]))
    except (TypeError, ValueError):
        return None
    metadata = copy.copy(train_reply.metadata)
    metadata.message_type = MessageType.EVALUATE
    content = RecordDict({"metrics": metrics, TASK_RECORD: records[EVALUATION_TASKS]})
    return Message(content=content, metadata=metadata)


def evaluation_outcome(
    strategy: Strategy,
    rnd: int,
    sent: int,
    replies: list[Message],
    validator: ReplyValidator,
    live: set[int],
    *,
    full: bool,
    rejected: Iterable[Rejection] = (),
) -> dict[str, Any]:
    """Check the evaluation replies of round `rnd` (`sent` were asked for; `live`: the
    connected nodes), aggregate the usable ones: the evaluation keys of its metrics line."""
    good, refused = validator.check_evaluate(rnd, replies, live_nodes=live)
    refused = [*rejected, *refused]
    log_rejections(rnd, "evaluations", refused)
    out: dict[str, Any] = {
        "eval_failures": sent - len(good),
        "eval_rejected": [r.as_dict() for r in refused],
    }
    if good:
        strategy.aggregate_evaluate(rnd, good)
        clients = per_client([m.content for m in good])
        # Full evaluations make the per-round curves; sampled ones are kept apart.
        prefix = "" if full else "sampled_"
        out[prefix + "per_task"] = per_task(clients)
        out[prefix + "per_client"] = clients
    return out


def run_rounds(
    grid: MeteredGrid,
    strategy: Strategy,
    arrays: ArrayRecord,
    cfg: RunConfig,
    results: RunResults,
    *,
    start_round: int = 1,
    secagg: Any = None,
    trained_clients: Iterable[str] = (),
    pending: Row | None = None,
) -> ArrayRecord:
    """Rounds `start_round`..`num-server-rounds`; `secagg` (a `SecAggTrainer`) replaces the
    Flower training phase when secure aggregation is on; `trained_clients` (from the
    checkpoint) are the clients that trained before and so must still hold private state;
    `pending` (from the checkpoint) is the line of round `start_round` - 1, still waiting for
    its evaluation."""
    total = cfg.num_server_rounds
    validator = ReplyValidator.for_run(cfg)  # learns node identities and norms over the run
    private = secagg.dp_strategy if secagg else strategy  # whose accountant composes releases
    have_state = set(trained_clients)
    piggyback = piggyback_possible(cfg)

    def write_pending(evaluation: dict[str, Any]) -> None:
        nonlocal pending
        if pending is not None:
            log_row(results, with_evaluation(pending, evaluation), total)
            pending = None

    def flush(arrays: ArrayRecord) -> None:
        """The pending line's evaluation in a wave of its own."""
        assert pending is not None
        t0 = time.perf_counter()
        grid.round = pending["round"]
        grid.take_counts()
        evaluation = evaluate_phase(grid, strategy, arrays, pending["round"], cfg, True, validator)
        up, down = grid.take_counts()
        pending["bytes_up"] += up
        pending["bytes_down"] += down
        pending["seconds"] = round(pending["seconds"] + time.perf_counter() - t0, 3)
        write_pending(evaluation)

    if pending is not None and not piggyback:
        flush(arrays)
    for rnd in range(start_round, total + 1):
        t0 = time.perf_counter()
        grid.round = rnd
        grid.take_counts()
        told: dict[str, Any] = {TRAINED_CLIENTS: encode_clients(have_state)} if have_state else {}
        if pending is not None:
            told[EVALUATE_ROUND] = pending["round"]
        try:
            check_budget(private)
            if secagg is not None:
                trained = secagg.train_round(rnd, arrays, told)
            else:
                trained = flower_train_phase(
                    grid, strategy, arrays, rnd, cfg, validator, told, write_pending
                )
        except PrivacyBudgetExhausted as err:
            log(WARNING, "fedmtl | stopping before round %d: %s", rnd, err)
            results.stopped_early = f"privacy budget: {err}"
            break
        refuse_lost_state(rnd, trained)
        have_state.update(trained.trained_clients)
        if "skipped" in trained.extra:
            log(WARNING, "fedmtl | round %d trained nothing: %s", rnd, trained.extra["skipped"])
        # Some strategies (FedOpt, DP noise) compute in float64: keep the model's dtypes.
        arrays = cast_like(trained.arrays, arrays)
        row: Row = {
            "round": rnd,
            "clients": trained.clients,
            "failures": trained.failures,
            "train_loss": trained.train_loss,
            **trained.extra,
        }
        central_dp = privacy_after_round(private)
        if central_dp:
            row["central_dp"] = central_dp  # cumulative client-level (ε, δ)
        row["train_seconds"] = round(time.perf_counter() - t0, 3)
        full = rnd % cfg.eval_every == 0 or rnd == total
        deferred = full and piggyback and rnd < total  # the clients evaluate in round rnd + 1
        evaluation: dict[str, Any] = {}
        if (full or cfg.fraction_evaluate > 0) and not deferred:
            evaluation = evaluate_phase(grid, strategy, arrays, rnd, cfg, full, validator)
        row["bytes_up"], row["bytes_down"] = grid.take_counts()
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if deferred:
            pending = row
        else:
            log_row(results, with_evaluation(row, evaluation), total)
        results.save_arrays(arrays)
        heads = getattr(strategy, "task_arrays", None)
        if heads is not None:
            results.save_arrays(heads, "task_arrays.npz")
        save_checkpoint(
            results.dir / "checkpoints",
            rnd,
            cfg.digest(),
            arrays,
            strategy,
            accountant=accountant_of(private),
            trained_clients=have_state,
            pending=pending,
        )
        if cfg.dp_insecure_seeded_noise:
            warn_seeded_noise(f"round {rnd}")
    if pending is not None:  # stopped before the round that would have evaluated it
        flush(arrays)
    return arrays


def piggyback_possible(cfg: RunConfig) -> bool:
    """Whether a round's training messages reach every client and can carry the previous
    round's evaluation: not when training samples clients, nor in SecAgg+'s legacy layout."""
    return cfg.piggyback_evaluation and not cfg.secagg and cfg.fraction_train >= 1.0


def with_evaluation(row: Row, evaluation: dict[str, Any]) -> Row:
    """`row` with the evaluation keys added, the byte counts and seconds kept last."""
    tail = {k: row.pop(k) for k in TAIL}
    evaluation = dict(evaluation)
    row["failures"] += evaluation.pop("eval_failures", 0)
    row.update(evaluation)
    row.update(tail)
    return row


def log_row(results: RunResults, row: Row, total: int) -> None:
    results.log_round(row)
    log(INFO, "fedmtl | %s", round_line(row, total))


def log_rejections(rnd: int, what: str, rejected: list[Rejection]) -> None:
    """One warning per distinct reason, naming the clients that gave it: ten clients with the
    same error are one line, not ten."""
    for group in group_failures(rejected):
        log(WARNING, "fedmtl | round %d: %s rejected from %s", rnd, what, describe([group]))


def refuse_lost_state(rnd: int, trained: TrainOutcome) -> None:
    """Stop the run when a client that trained before refused because its private state is
    gone (a restart or resume without its state dir): going on would train it from fresh
    heads, and under DP-SGD restart its ε at 0, without anyone noticing."""
    said = re.compile(rf"client \S+: {re.escape(STATE_MISSING)}[^'\n]*")
    lost = [m[-1] for r in trained.extra.get("rejected", []) if (m := said.findall(r["reason"]))]
    if lost:  # the client's own words, without the traceback around them
        raise RoundFailed(
            f"round {rnd}: {len(lost)} client(s) lost their private state: " + " | ".join(lost)
        )


def cast_like(new: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """`new` with each array in the dtype of the same key in `reference`."""
    out = {}
    for key, array in new.items():
        dtype = reference[key].numpy().dtype if key in reference else None
        value = array.numpy()
        out[key] = (
            Array(value.astype(dtype)) if dtype is not None and value.dtype != dtype else array
        )
    return ArrayRecord(out)


def round_line(row: dict, total: int) -> str:
    parts = [f"round {row['round']:>3}/{total}"]
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.3f}")
    for task, metrics in row.get("per_task", {}).items():
        h = headline(metrics)
        if h:
            parts.append(f"{task} {h[0][:3]} {h[1]:.3f}")
    if "central_dp" in row:
        dp = row["central_dp"]
        amplified = dp.get("epsilon_amplified")
        more = "" if amplified is None else f" (amplified {amplified:.2f})"
        parts.append(f"ε {dp['epsilon']:.2f}{more}")
    if row.get("dp_epsilon"):
        parts.append(f"ε ≤ {max(row['dp_epsilon'].values()):.2f}")
    if row.get("failures"):
        parts.append(f"{row['failures']} failed")
    if row.get("skipped"):
        parts.append("SKIPPED (nothing released)")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)
