"""docs/PERFORMANCE.md and its plots, from the sections' measurements (JSON under
results/bench/). Pure formatting: it measures nothing, so it can be tested on made-up numbers
and re-run on saved ones."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.runs import REPO
from experiments.bench.communication import CLASSIFICATION, PARALLEL
from experiments.bench.deployment import BOTH_POLL_KEY, GRID_POLL_KEY, POLL_S
from experiments.bench.flower import PROBE_PAYLOAD
from experiments.bench.sampling import MEMORY_INTERVAL_S

DOC = REPO / "docs" / "PERFORMANCE.md"
PLOTS = REPO / "docs" / "performance"
ORDER = ("overhead", "scale", "aggregation", "communication", "deployment")
COMMANDS = {
    "all": "python -m experiments.bench            # every section, rewrites docs/PERFORMANCE.md",
    "some": "python -m experiments.bench --only scale aggregation   # re-run some, keep the rest",
    "report": "python -m experiments.bench --report-only   # re-render from results/bench/*.json",
    "quick": "python -m experiments.bench --quick --no-doc   # smoke test of the harness",
}
BENCH_MINUTES = 30.0  # target: all sections together
# Intervals in Flower's own code that the timings below are explained with. Read from the
# installed flwr, not typed, so the text follows the Flower that ran; a test checks that each
# is still found. name -> (module, object in it, pattern whose group 1 is the seconds).
FLOWER_FACTS: dict[str, tuple[str, str, str]] = {
    "vce_tick_s": (
        "flwr.server.superlink.fleet.vce.vce_api",
        "add_messages_to_queue",
        r"f_stop\.wait\(([\d.]+)\)",
    ),
    "inmemory_pull_s": (
        "flwr.superlink.grid.inmemory_grid",
        "InMemoryGrid.__init__",
        r"pull_interval: float = ([\d.]+)",
    ),
    "superexec_poll_s": (
        "flwr.supercore.superexec.run_superexec",
        "",
        r"_DEFAULT_TASK_POLL_INTERVAL_SECONDS = ([\d.]+)",
    ),
    "supernode_idle_poll_s": (
        "flwr.supernode.start_client_internal",
        "",
        r"If no message was received, wait for a while\s+time\.sleep\(([\d.]+)\)",
    ),
    "http_grid_pull_s": (
        "flwr.superlink.grid.http_grid",
        "HttpGrid.send_and_receive",
        r"time\.sleep\(([\d.]+)\)",
    ),
}


@cache
def flower_facts() -> dict[str, float | None]:
    """Each FLOWER_FACTS interval in seconds, or None where the source no longer matches."""
    out: dict[str, float | None] = {}
    for name, (module, qualname, pattern) in FLOWER_FACTS.items():
        try:
            obj: Any = importlib.import_module(module)
            for part in filter(None, qualname.split(".")):
                obj = getattr(obj, part)
            match = re.search(pattern, inspect.getsource(obj))
        except (ImportError, AttributeError, OSError, TypeError):
            match = None
        out[name] = float(match.group(1)) if match else None
    return out


def fact(name: str) -> str:
    """A FLOWER_FACTS interval for the text ('?' when not found)."""
    value = flower_facts()[name]
    return "?" if value is None else f"{value:g}"


def federation_option(federation: str, key: str) -> str:
    """One option's value in a federation config string ('?' when absent)."""
    match = re.search(rf"(?:^| ){re.escape(key)}=(\S+)", federation or "")
    return match.group(1) if match else "?"


def federation_changes(federation: str, baseline: str) -> list[str]:
    """The options of `federation` that are not in `baseline`, as `key=value`."""
    base = set((baseline or "").split())
    return [x for x in (federation or "").split() if x not in base]


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for a table: fixed digits, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def targets_table(sections: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name in ORDER:
        for t in sections.get(name, {}).get("targets", []):
            unit = t.get("unit", "×")
            sign = "≥" if t.get("higher_is_better") else "≤"
            rows.append(
                [
                    name,
                    t["name"],
                    fmt(t["measured"], 2, f" {unit}" if unit != "×" else "×"),
                    f"{sign} {fmt(t['limit'], 1)}{'×' if unit == '×' else ' ' + unit}",
                    "**met**" if t["met"] else "**not met**",
                    t.get("note", ""),
                ]
            )
    if all(name in sections for name in ORDER):
        minutes = sum(sections[n].get("seconds", 0.0) for n in ORDER) / 60
        loads = [sections[n].get("load_avg_after", [float("nan")])[0] for n in ORDER]
        rows.append(
            [
                "bench",
                "`python -m experiments.bench`: all sections (sum of their durations)",
                fmt(minutes, 1, " min"),
                f"≤ {BENCH_MINUTES:g} min",
                "**met**" if minutes <= BENCH_MINUTES else "**not met**",
                f"1-min load average after each section: {', '.join(fmt(x, 1) for x in loads)}",
            ]
        )
    return table(["section", "target", "measured", "target", "status", "note"], rows)


# --- sections ---


def render_overhead(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    cfg = s.get("config", {})
    extra = f" + {cfg['overrides']}" if cfg.get("overrides") else ""
    run_cfg = parse_run_config(cfg.get("overrides", {}))
    engines = ", ".join(
        f"`{tag}` with {federation_option(f.get('federation', ''), 'client-resources-num-cpus')}"
        " CPU per client"
        for tag, f in s.get("flower", {}).items()
    )
    out = [
        "## 1. Overhead vs the physical limit",
        "",
        f"Config: `make run` defaults ({cfg.get('resolved_clients', '?')} clients, "
        f"{cfg.get('rounds', '?')} rounds, {run_cfg.dataset}, {run_cfg.algorithm}){extra}. "
        f"Flower: `SimulationEngine` runs, {engines}; a single actor is serial like the bare "
        "loop. Bare: `run_bare` in a fresh "
        "interpreter (its wall time includes Python, torch and data start-up), run before, "
        f"between and after the {len(s.get('flower', {}))} Flower runs "
        f"(walls: {', '.join(fmt(w, 1) for w in s.get('bare_walls_s', []))} s): each Flower "
        "run is compared with the mean of the two bare runs around it, and the range "
        "against each of them shows how much the machine's load moved meanwhile. `cold` is "
        "`make run`: a fresh engine (SuperLink and Ray head started side by side) + the run + "
        "stopping them; `warm` is the next run on that engine, as every run of a study after "
        "its first; `per-run-ray` leaves Ray to Flower, which starts it inside every run (what "
        "each run cost before the engine kept a head).",
        "",
    ]
    ratios = s.get("ratios", {})
    bare = s.get("bare", {})
    rows = []
    for tag, f in s.get("flower", {}).items():
        r = ratios.get(tag, {})
        engine = s.get("engine_start_s", 0) + s.get("engine_stop_s", 0)
        total = r.get("total_s", engine + f["wall_s"])
        rows.append(
            [
                f"Flower, {tag}",
                fmt(total, 1),
                fmt(f["submit_to_serverapp_s"], 1),
                fmt(f["round1_s"], 1),
                fmt(f["warm_round_median_s"], 3),
                fmt(f["warm_rounds_sum_s"], 1),
                fmt(r.get("fixed_startup_s"), 1),
                fmt(r.get("including_startup"), 2, "×") + _span(r.get("including_startup_range")),
                fmt(r.get("excluding_startup"), 2, "×") + _span(r.get("excluding_startup_range")),
            ]
        )
    if bare:
        warm = bare["rounds"][1:]
        rows.append(
            [
                "bare loop (fastest run)",
                fmt(bare.get("process_wall_s"), 1),
                "–",
                fmt(bare["rounds"][0]["seconds"], 1),
                fmt(_median([r["seconds"] for r in warm]), 3),
                fmt(sum(r["seconds"] for r in warm), 1),
                fmt(bare.get("process_wall_s", 0) - sum(r["seconds"] for r in bare["rounds"]), 1),
                "1×",
                "1×",
            ]
        )
    out += table(
        [
            "path",
            "total s",
            "submit → ServerApp s",
            "round 1 s",
            "warm round s (median)",
            "rounds 2..N s",
            "fixed start-up s",
            "ratio incl. start-up",
            "ratio excl. start-up",
        ],
        rows,
    )
    out += [
        "Fixed start-up = total − N × median warm round. It is where Flower's overhead is: "
        "the CLI builds and uploads the FAB, the SuperLink's SuperExec polls for the run "
        f"(every {fact('superexec_poll_s')} s) and starts `flwr-simulation`, which imports the "
        "ServerApp, attaches to the engine's Ray head (or, per run, starts Ray), "
        "creates the actors, and each actor imports torch + the ClientApp and builds its data "
        "on its first message (round 1); at the end, summary/plots, Ray disconnect and the CLI "
        "exit.",
        "",
    ]
    out += render_startup(s)
    out += [
        "![round times](performance/overhead_rounds.png)",
        "",
        "Per warm round (medians):",
        "",
    ]
    clients = cfg.get("resolved_clients", 0)
    rows = []
    for tag, p in s.get("per_round", {}).items():
        est = probe_dispatch_estimate(s.get("probe", {}).get(tag), clients)
        rows.append(
            [
                tag,
                fmt(p["flower_round_s"], 3),
                fmt(p["bare_round_s"], 3),
                fmt(p["client_compute_s"], 3),
                fmt(p["clientapp_bookkeeping_s"], 3),
                fmt(p["aggregation_s"] * 1000, 2),
                fmt(p.get("server_writes_s", float("nan")) * 1000, 1),
                fmt(p["dispatch_s"], 3),
                fmt(est, 3),
            ]
        )
    out += table(
        [
            "Flower",
            "Flower round s",
            "bare round s",
            "client compute s (bare, serial)",
            "ClientApp bookkeeping s",
            "aggregation ms",
            "server's files ms",
            "dispatch s (remainder)",
            "dispatch s (probe estimate)",
        ],
        rows,
    )
    out += [
        "The remainder is the Flower round minus what the bare loop and the in-process "
        "profile measured; it is negative when the bare loop, run minutes apart on this "
        "shared machine, was slower per round than Flower's actors: Flower's per-round "
        "dispatch is below what run-to-run noise resolves here. The probe measures it "
        "directly: a training and an evaluation wave per round, each costing the probe's "
        "small-wave time, plus the marginal cost per call for every message. The server's "
        "files are what it writes every round (metrics line, shared arrays, checkpoint: "
        "each atomic and fsynced, the durability docs/SECURITY.md promises); the "
        "bookkeeping includes each client writing its private state (one fsynced file per "
        "message).",
        "",
    ]
    app = s.get("clientapp", {})
    if app:
        out += [
            f"ClientApp bookkeeping per train message (in process, warm): "
            f"{fmt(app['warm_overhead_s'] * 1000, 1)} ms besides `local_round` "
            f"({fmt(app['warm_local_round_s'] * 1000, 1)} ms); `open_session` (config, cached "
            f"data, model build, state restore) {fmt(app['warm_open_session_s'] * 1000, 1)} ms. "
            f"The first message of a process costs {fmt(app['first_message_s'], 2)} s "
            "(data, first torch calls). With more than one actor the remainder includes the gain "
            "from running clients at once, so it can be negative; the one-actor row is the "
            "like-for-like one.",
            "",
        ]
    probe = s.get("probe", {})
    if probe:
        out += [
            f"### Flower alone: probe app (trivial ClientApp, {PROBE_PAYLOAD} float32 each way)",
            "",
            "`experiments/bench/probe/` echoes what it gets; its ServerApp times waves of "
            "messages with `grid.send_and_receive`. The first wave (cold) waits for Ray and "
            "the actors.",
            "",
        ]
        rows = []
        for tag, p in probe.items():
            waves = ", ".join(f"{k}: {fmt(v, 3)}" for k, v in p["wave_median_s"].items())
            rows.append(
                [
                    tag,
                    p["nodes"],
                    p["actors"],
                    waves,
                    fmt(p["per_call_s"] * 1000, 1),
                    fmt(p["cold_wave_s"], 1),
                    fmt(p["submit_to_serverapp_s"], 1),
                    fmt(p["wall_s"], 1),
                ]
            )
        out += table(
            [
                "probe",
                "nodes",
                "actors",
                "median s per wave of k messages (k: s)",
                "marginal ms per call",
                "cold wave s",
                "submit → ServerApp s",
                "run wall s",
            ],
            rows,
        )
        out += [
            f"Where it comes from (flwr {machine.get('flwr', '?')} source): "
            f"`vce_api.add_messages_to_queue` wakes every {fact('vce_tick_s')} s "
            "and asks the in-memory LinkState for one message per node, for every node; "
            "each `get_message_ins` scans the whole message store under the state lock, so a "
            "tick costs O(nodes × stored messages) and blocks `store_message_res` and the "
            "ServerApp's pulls meanwhile. `InMemoryGrid.send_and_receive` pulls every "
            f"{fact('inmemory_pull_s')} s. "
            "One worker thread per actor calls `RayBackend.process_message`, which pickles the "
            "ClientApp loader, the message and the node's whole `Context` (its `state` holds "
            "the private heads) to the actor and back for every message "
            "(`ray_actor.ClientAppActor.run`). A small wave therefore costs one or two ticks "
            "whatever it carries; a large federation pays the per-tick scan.",
            "",
        ]
        out += render_fixed_waits(probe)
    knobs = s.get("knobs", {})
    if knobs:
        base = knobs.get("baseline", {})
        rows = []
        mini = cfg.get("mini", {})
        mini_cfg = parse_run_config(mini)
        for tag, k in knobs.items():
            rows.append(
                [
                    tag,
                    knob_change(tag, k, mini),
                    fmt(k["wall_s"], 1),
                    fmt(k["submit_to_serverapp_s"], 1),
                    fmt(k["round1_s"], 1),
                    fmt(k["warm_round_median_s"], 3),
                    fmt(k["wall_s"] / base["wall_s"], 2, "×") if base else "–",
                ]
            )
        out += [
            f"### Knobs (real app, {mini_cfg.num_server_rounds} rounds, same engine, "
            "one after another)",
            "",
        ]
        out += table(
            [
                "knob",
                "change vs baseline",
                "wall s",
                "submit → ServerApp s",
                "round 1 s",
                "warm round s",
                "wall vs baseline",
            ],
            rows,
        )
        out += [
            _knob_notes(s, machine, mini_cfg.fraction_evaluate) + " `client-resources-num-gpus` "
            "and `init-args-num-gpus` do nothing without a GPU. `repo-dir` is no Flower "
            "option: every row but it submits a slim copy of the app (only `client/`, "
            "`common/`, `server/` and pyproject.toml, `deploy.runs.stage_app`, which "
            "`make run`, the tests and every harness use); `repo-dir` submits the repository "
            "directory as `flwr run .` does (see below).",
            "",
        ]
    out += render_pfl(s.get("pfl"))
    fab = s.get("fab_build", {})
    if fab:
        repo, slim = fab.get("repository", {}), fab.get("slim", {})
        out += [
            "FAB build (`flwr.cli.build.build_fab_from_disk`, what `flwr run <dir>` does before "
            f"submitting): the repository directory: {fmt(repo.get('files_walked'))} files walked "
            f"(.venv, .state, results, node_modules, .git), {fmt(repo.get('seconds'), 2)} s for a "
            f"{fmt(repo.get('fab_bytes'))}-byte FAB; a slim app directory: "
            f"{fmt(slim.get('files_walked'))} files, {fmt(slim.get('seconds'), 3)} s, "
            f"{fmt(slim.get('fab_bytes'))} bytes. Flower's `collect_files` walks and resolves "
            "every file, then filters them by .gitignore.",
            "",
        ]
    return out


def render_startup(s: dict[str, Any]) -> list[str]:
    """Where the time outside the warm rounds goes, per path, and what the warm Ray head
    saves per run."""
    split = s.get("startup", {})
    if not split:
        return []
    rows = []
    for tag, p in split.items():
        cold = tag == "cold"
        rows.append(
            [
                tag,
                fmt(s.get("engine_start_s"), 1) if cold else "–",
                fmt(p["submit_to_simulation_s"], 1),
                fmt(p["simulation_to_serverapp_s"], 1),
                fmt(p["round1_extra_s"], 1),
                fmt(p["serverapp_outside_rounds_s"], 1),
                fmt(p["last_round_to_exit_s"], 1),
                fmt(s.get("engine_stop_s"), 1) if cold else "–",
            ]
        )
    out = ["Start-up and shut-down, split (s):", ""]
    out += table(
        [
            "path",
            "engine start (SuperLink ‖ Ray head)",
            "submit → simulation process",
            "→ ServerApp running",
            "round 1 beyond a warm round",
            "ServerApp outside rounds",
            "last round → CLI exit",
            "engine stop",
        ],
        rows,
    )
    saving = s.get("ray_head_saving_s")
    if saving is not None:
        out += [
            "Submit → simulation process: the `flwr` CLI starts, builds and uploads the FAB, "
            f"SuperExec polls every {fact('superexec_poll_s')} s and starts `flwr-simulation`. "
            "→ ServerApp: it installs the FAB, imports the ServerApp (torch) and, with Ray per "
            "run, starts Ray meanwhile. Round 1 beyond a warm round: the actors (new processes "
            "in every run: Ray cannot hand one job's actors to the next) import torch and the "
            "ClientApp and build their data. What the warm Ray head saves per run (Ray per "
            f"run − warm, same config): {fmt(saving, 1)} s.",
            "",
        ]
    return out


def render_fixed_waits(probe: dict[str, Any]) -> list[str]:
    """What remains of Flower's own waits once the grid pulls often: the probe's small waves
    with the grid's default pull interval and with fedmtl's."""
    slow, fast = probe.get("2-actors"), probe.get("2-actors-pull-0.01")
    if not slow or not fast:
        return []

    def small(p: dict[str, Any]) -> float:
        return _median([v for k, v in p["wave_median_s"].items() if int(k) <= 2])

    return [
        f"What remains of Flower's fixed waits: with the grid pulling every "
        f"{fmt(slow.get('pull_interval_s'), 2)} s (Flower's default) a wave of 1–2 messages "
        f"takes {fmt(small(slow), 3)} s (median), pulling every "
        f"{fmt(fast.get('pull_interval_s'), 2)} s (`grid-pull-interval`, fedmtl's default) "
        f"{fmt(small(fast), 3)} s; a wave of {fast['nodes']} "
        f"{fmt(fast['wave_median_s'].get(str(fast['nodes'])), 3)} s against "
        f"{fmt(slow['wave_median_s'].get(str(slow['nodes'])), 3)} s. What is left is the "
        f"simulation's message queue: `vce_api.add_messages_to_queue` takes new messages "
        f"every {fact('vce_tick_s')} s (`f_stop.wait({fact('vce_tick_s')})`), so back-to-back "
        "waves of short work run at most one per tick: a round costs its work rounded up "
        f"to the next multiple of {fact('vce_tick_s')} s, whatever the pull interval. Flower "
        "exposes no setting for it; a round whose work stays under one tick costs one tick.",
        "",
    ]


def render_pfl(pfl: dict[str, Any] | None) -> list[str]:
    """The PFLlib-style workload: fedmtl cold and warm against the plain in-process loop."""
    if not pfl:
        return []
    over = pfl["overrides"]
    cfg = parse_run_config(over)
    rows = []
    for tag, total in (("cold", pfl["cold_total_s"]), ("warm", pfl["warm"]["wall_s"])):
        f = pfl[tag]
        rows.append(
            [
                f"fedmtl, {tag}",
                fmt(total, 1),
                fmt(f["round1_s"], 1),
                fmt(f["warm_round_median_s"], 3),
                fmt(f["warm_rounds_sum_s"], 1),
                fmt(pfl[f"{tag}_ratio"], 2, "×") + _span(pfl[f"{tag}_ratio_range"]),
            ]
        )
    rows.append(
        [
            "plain in-process loop",
            ", ".join(fmt(w, 1) for w in pfl["bare_walls_s"]),
            "–",
            fmt(pfl["bare_round_median_s"], 3),
            "–",
            "1×",
        ]
    )
    out = [
        f"### PFLlib-style workload ({cfg.num_clients} clients, {cfg.dataset}, lr "
        f"{cfg.lr:g}, {cfg.local_epochs} local epoch{'s' * (cfg.local_epochs != 1)}, batch "
        f"{cfg.batch_size}, "
        f"{cfg.num_server_rounds} rounds, evaluated at the end only)",
        "",
        "Short rounds, so the fixed costs weigh most. The plain loop is `run_bare` (the same "
        "clients, data, seeds and `local_round`; FedAvg of the shared arrays in process) in a "
        "fresh interpreter, before and after; cold = `fedmtl-run` (engine start + run + stop: "
        f"{fmt(pfl['engine_start_s'], 1)} + {fmt(pfl['cold']['wall_s'], 1)} + "
        f"{fmt(pfl['engine_stop_s'], 1)} s); warm = the next run on that engine.",
        "",
    ]
    out += table(
        [
            "path",
            "total s",
            "round 1 s",
            "warm round s (median)",
            "rounds 2..N s",
            "vs plain loop",
        ],
        rows,
    )
    return out


def knob_change(tag: str, knob: dict[str, Any], mini: dict[str, Any]) -> str:
    """What a knob row changed against the baseline, from the knob definitions the bench
    ran (`overhead.knob_runs`)."""
    from experiments.bench.overhead import knob_runs

    if tag == "baseline":
        return "–"
    if tag == "repo-dir":
        return "submitted from the repository directory instead of the slim copy"
    for name, over, _cpus, extra in knob_runs(mini):
        if name == tag:
            parts = []
            if over:
                parts.append("run config `" + " ".join(f"{k}={v:g}" for k, v in over.items()) + "`")
            if extra:
                parts.append(
                    "federation config `" + " ".join(f"{k}={v}" for k, v in extra.items()) + "`"
                )
            return "; ".join(parts)
    return f"`{knob.get('federation', '?')}`"


def _knob_notes(s: dict[str, Any], machine: dict[str, Any], fraction_evaluate: float) -> str:
    """The knobs explained, every setting read from the runs' federation configs, the run
    config defaults and the machine record."""
    knobs, flower, probe = s.get("knobs", {}), s.get("flower", {}), s.get("probe", {})
    base = knobs.get("baseline", {}).get("federation", "")
    out = [
        "`eval-every` = the round count together with `fraction-evaluate=0`"
        + (
            f" (with the default `fraction-evaluate={fraction_evaluate:g}` every round still "
            "runs a sampled evaluation, so `eval-every` alone saves little)."
            if fraction_evaluate > 0
            else " (`fraction-evaluate` is 0 by default, so the knob drops the full "
            "evaluations of every round but the last)."
        )
    ]
    for tag, k in knobs.items():
        changes = federation_changes(k.get("federation", ""), base)
        if tag != "baseline" and changes:
            out.append(
                f"`{tag}` sets `{' '.join(changes)}` on a {machine.get('cores', '?')}-core machine."
            )
    cpus = [
        f"{federation_option(f.get('federation', ''), 'client-resources-num-cpus')} (`{tag}`)"
        for tag, f in flower.items()
    ]
    if len(cpus) > 1:
        out.append(f"`client-resources-num-cpus` {' vs '.join(cpus)} is compared above.")
    first = next(iter(probe.values()), {}).get("federation", "")
    for tag, p in probe.items():
        changes = [
            c
            for c in federation_changes(p.get("federation", ""), first)
            if "num-supernodes" not in c
        ]
        if changes:
            out.append(f"The probe `{tag}` tries `{' '.join(changes)}`.")
    return " ".join(out)


def probe_dispatch_estimate(probe: dict[str, Any] | None, clients: int) -> float | None:
    """Flower's dispatch per round of the real app from the probe with the same actors:
    2 waves (training, evaluation) at the small-wave time + 2·clients calls."""
    if not probe or not clients:
        return None
    small = [v for k, v in probe.get("wave_median_s", {}).items() if int(k) <= 2]
    per_call = probe.get("per_call_s", float("nan"))
    if not small or per_call != per_call:
        return None
    return 2 * _median(small) + 2 * clients * max(per_call, 0.0)


def render_scale(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    runs = s.get("runs", {})
    main = runs.get("main", {})
    sweep = [r for name, r in runs.items() if name != "main"]
    stopped = max((len(r.get("round_seconds", [])) for r in sweep), default=None)
    out = [
        "## 2. Scale",
        "",
        f"SynthCorr, {s.get('clients')} clients × {s.get('samples_per_client')} samples "
        f"(main run) or × {s.get('sweep_samples_per_client')} (sweep: stopped after round "
        f"{stopped if stopped is not None else '?'}, so its first, cold round of partitioning "
        "stays short), `fraction-train` = k/clients, "
        "`fraction-evaluate=0`, `eval-every` past the end: only the main run's last round "
        "evaluates every client. Memory: every process the engine runs, below its "
        "SuperLink (SuperExec, flwr-simulation) and below its Ray head (GCS, raylet, agents, "
        "actors), sampled every "
        f"{MEMORY_INTERVAL_S:g} s from /proc; RSS counts shared pages once per process, PSS "
        "splits them.",
        "",
    ]
    if main:
        out += [
            f"Main run ({main['clients_per_round'][0] if main.get('clients_per_round') else '?'} "
            f"per round, {len(main.get('round_seconds', []))} rounds): status "
            f"`{main['status']}`, wall {fmt(main['wall_s'], 1)} s, "
            f"round 1 (cold: each actor imports torch and partitions all clients) "
            f"{fmt(main['round1_s'], 1)} s, warm training round "
            f"{fmt(main['warm_train_median_s'], 2)} s, final full evaluation of every client "
            f"{fmt(main.get('final_full_evaluation_s'), 1)} s, failures {main['failures']}. "
            f"Peak memory of the tree: RSS {fmt(main['peak_rss_gb'], 2)} GB, "
            f"PSS {fmt(main['peak_pss_gb'], 2)} GB ({main['memory_samples']} samples).",
            "",
        ]
    rows = []
    for name, r in runs.items():
        rows.append(
            [
                name,
                r["clients_per_round"][-1] if r.get("clients_per_round") else "–",
                ", ".join(fmt(x, 2) for x in r["train_seconds"]),
                fmt(r["warm_train_median_s"], 2),
                fmt(r["peak_rss_gb"], 2),
                fmt(r["peak_pss_gb"], 2),
                "stopped after its timed rounds" if r.get("stopped_early") else r["status"],
            ]
        )
    out += table(
        [
            "run",
            "clients / round",
            "training phase s per round",
            "warm median s",
            "peak RSS GB",
            "peak PSS GB",
            "end",
        ],
        rows,
    )
    fit = s.get("fit", {})
    if fit:
        quad = fit.get("quadratic", {})
        out += [
            f"Warm training round vs sampled clients k: t ≈ {fmt(fit['slope'] * 1000, 1)} ms × k "
            f"{'+' if fit['intercept'] >= 0 else '−'} {fmt(abs(fit['intercept']), 2)} s "
            f"(R² {fmt(fit['r2'], 3)}"
            + (f"; a quadratic fit reaches R² {fmt(quad['r2'], 3)}" if quad else "")
            + "). ![time per round vs sampled clients](performance/scale_rounds.png)",
            "",
        ]
    col = s.get("column_read")
    if col:
        n = s.get("clients") or 0
        out += [
            "Cold round: each actor builds the pool and partitions all clients on its first "
            "message (`common.federation.partition_indices`, cached per process). Turning one "
            "partition's `idx` column into numpy costs "
            f'{fmt(col["slice_ms"], 1)} ms as the code reads it now (`np.asarray(ds["idx"][:])`)'
            f' against {fmt(col["lazy_ms"], 1)} ms as it read it before (`np.asarray(ds["idx"])`'
            ": datasets 4 returns a lazy column that numpy walks row by row) "
            f"({col['partitions_timed']} partitions of {col['partition_size']} rows out of "
            f"{fmt(col['rows'])}, medians): about "
            f"{fmt((col['lazy_ms'] - col['slice_ms']) * n / 1000, 0)} s saved per "
            f"process for {n} partitions.",
            "",
        ]
    return out


def render_aggregation(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    enc, heads = s.get("encoder", {}), s.get("heads", {})
    out = [
        "## 3. Aggregation",
        "",
        f"{s.get('updates')} updates × {fmt(s.get('parameters'))} float32 parameters, "
        f"{s.get('repeats')} interleaved repeats (minimum and median). The reference "
        "is numpy adding the same, already deserialised arrays in place "
        f"({fmt(enc.get('reference_gb_per_s'), 2)} GB/s read on this machine now).",
        "",
    ]
    rows = []
    for label, d, key in (
        ("FedAvg: `aggregate_arrayrecords`", enc, "flower"),
        ("numpy sum (reference)", enc, "reference"),
        ("`Array.numpy()` of every update alone", enc, "deserialise"),
        ("zero-copy + BLAS axpy weighted mean (proposed)", enc, "zero_copy"),
        ("task heads: `aggregate_task_arrays`", heads, "flower"),
        ("numpy sum per head (reference)", heads, "reference"),
    ):
        if d and key in d.get("min_s", {}):
            ref = d["min_s"]["reference"]
            rows.append(
                [
                    label,
                    fmt(d["min_s"][key] * 1000, 1),
                    fmt(d["median_s"][key] * 1000, 1),
                    fmt(d["min_s"][key] / ref, 2, "×"),
                ]
            )
    out += table(["aggregation", "min ms", "median ms", "min vs reference"], rows)
    out += [
        "Flower's `aggregate_arrayrecords` deserialises every update with `np.load` (a copy), "
        "computes `value.numpy() * weight` (a temporary per update) and serialises the result "
        "with `np.save`: several passes over memory per update where the reference makes one. "
        "The proposed variant reads each update in place (`np.frombuffer` past the .npy "
        "header) and adds it scaled with BLAS `saxpy` (acc += w·x, one pass, one BLAS "
        "thread, so OpenBLAS's spinning threads do not compete with the other processes); it "
        "gives the same result as Flower's to float32 rounding (tested).",
        "",
    ]
    return out


def render_communication(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    out = [
        "## 4. Communication",
        "",
        "Bytes per client and training round as counted on the messages (array payload, .npy "
        "headers included) in the rounds that only train (evaluation runs in the last round "
        f"alone; round 1 is left out: fedavg has no heads to send yet). fedper is the "
        f"compression `none` run ({s.get('compression_rounds')} rounds), the others ran "
        f"{s.get('algorithm_rounds')} rounds. Nothing in this section is timed (seeds fix "
        f"bytes and accuracies), so up to {PARALLEL} of its runs go at a time.",
        "",
    ]
    rows = [
        [
            name,
            fmt(a["encoder_parameters"]),
            fmt(a["encoder_bytes"]),
            fmt(a["bytes_up_per_client"], 0),
            fmt(a["up_vs_encoder"], 3, "×"),
            fmt(a["bytes_down_per_client"], 0),
            fmt(a["down_vs_encoder"], 3, "×"),
        ]
        for name, a in s.get("algorithms", {}).items()
    ]
    out += table(
        [
            "algorithm",
            "shared params",
            "params × 4 B",
            "up B / client",
            "up / (params × 4)",
            "down B / client",
            "down / (params × 4)",
        ],
        rows,
    )
    comp = s.get("compression", {})
    rows = []
    for method, c in comp.items():
        rows.append(
            [
                method,
                fmt(_mean([r["bytes_up_per_client_round"] for r in c["runs"]]), 0),
                fmt(c["bytes_up_ratio"], 2, "×"),
                ", ".join(fmt(r["mean_accuracy"] * 100, 2) for r in c["runs"]),
                fmt(c["mean_accuracy"] * 100, 2),
                fmt(0.0 - c["accuracy_drop_points"] + 0.0, 2),
            ]
        )
    out += [
        f"Compression on MultiDigits (fedper, default clients), {s.get('compression_rounds')} "
        f"rounds, seeds {s.get('seeds')}: mean test accuracy over the classification tasks "
        f"({', '.join(CLASSIFICATION)}) in the final round, in %.",
        "",
    ]
    out += table(
        [
            "compression",
            "up B / client / round",
            "bytes up: none / this",
            "accuracy per seed %",
            "mean %",
            "vs none (points)",
        ],
        rows,
    )
    return out


def render_deployment(s: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    cfg = s.get("config", {})
    run_cfg = parse_run_config(cfg)
    sim_rounds = len(s.get("simulation", {}).get("round_seconds", []))
    variant_rounds = sorted(
        {
            len(s[k]["round_seconds"])
            for k in ("tls", GRID_POLL_KEY, BOTH_POLL_KEY)
            if k in s and "round_seconds" in s[k]
        }
    )
    variants = " or ".join(map(str, variant_rounds)) or "?"
    out = [
        "## 5. Deployment latency",
        "",
        f"{run_cfg.num_clients} clients, default {run_cfg.dataset} config; a round is a "
        "training wave and an evaluation wave. Loopback deployment (`LocalDeployment`, "
        "subprocess isolation: every message starts a fresh ClientApp process, so all its "
        f"rounds are alike; the variants run {variants} round(s)) vs Flower's simulation of the "
        f"same config ({sim_rounds} rounds: round 1 is cold, later ones warm).",
        "",
    ]
    rows = []
    for key, label in (
        ("simulation", "simulation"),
        ("insecure", "deployment, insecure"),
        ("tls", "deployment, TLS + node auth"),
        (
            GRID_POLL_KEY,
            f"deployment, insecure, MeteredGrid pulls every {POLL_S:g} s (patched copy)",
        ),
        (BOTH_POLL_KEY, f"… and FLWR_SUPEREXEC_TASK_POLL_INTERVAL={POLL_S:g}"),
    ):
        d = s.get(key)
        if not d or "skipped" in d:
            continue
        rows.append(
            [
                label,
                fmt(d.get("up_s"), 1),
                fmt(d["run_wall_s"], 1),
                ", ".join(fmt(x, 1) for x in d["round_seconds"]),
                ", ".join(fmt(x, 1) for x in d["train_seconds"]),
                ", ".join(fmt(x, 1) for x in d["eval_seconds"]),
                fmt(d["wave_median_s"], 2),
                d["status"],
            ]
        )
    out += table(
        [
            "path",
            "start s",
            "run wall s",
            "round s",
            "training wave s",
            "evaluation wave s",
            "wave median s",
            "status",
        ],
        rows,
    )
    ratios = [
        f"deployment round / simulation warm round: {fmt(s.get('ratio_round_deploy_vs_sim'), 1)}×",
        f"TLS / insecure, per wave: {fmt(s.get('ratio_wave_tls_vs_insecure'), 2)}×",
    ]
    for key, label in (
        (GRID_POLL_KEY, f"grid pull every {POLL_S:g} s / insecure"),
        (BOTH_POLL_KEY, f"grid + SuperExec poll {POLL_S:g} s / insecure"),
    ):
        if f"ratio_wave_{key}_vs_insecure" in s:
            ratios.append(f"{label}, per wave: {fmt(s[f'ratio_wave_{key}_vs_insecure'], 2)}×")
    out += ["; ".join(ratios) + ".", ""]
    spawn, imports = s.get("spawn", {}), s.get("imports", {})
    if spawn:
        out += [
            "Where a deployment wave goes: every message starts a new ClientApp process. In a "
            f"fresh interpreter `import client.app` takes {fmt(spawn.get('import_s'), 2)} s and "
            f"the first `load_client_data` {fmt(spawn.get('data_s'), 2)} s (whole process "
            f"{fmt(spawn.get('process_s'), 2)} s; the simulation pays this once per actor). "
            "Cumulative import time of the heavy modules (`-X importtime`, import + first data "
            "load): "
            + ", ".join(f"`{k}` {fmt(v, 2)} s" for k, v in imports.items())
            + f". On top: an idle SuperNode polls every {fact('supernode_idle_poll_s')} s "
            f"(hard-coded), SuperExec looks for tasks every {fact('superexec_poll_s')} s, and "
            f"the ServerApp's `HttpGrid.send_and_receive` sleeps {fact('http_grid_pull_s')} s "
            "between pulls, so a wave is rounded up to a multiple of that. All "
            f"{run_cfg.num_clients} nodes start their processes at once on "
            f"{machine.get('cores', '?')} cores.",
            "",
        ]
    return out


RENDERERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[str]]] = {
    "overhead": render_overhead,
    "scale": render_scale,
    "aggregation": render_aggregation,
    "communication": render_communication,
    "deployment": render_deployment,
}


def render(
    sections: dict[str, dict[str, Any]], machine: dict[str, Any], *, quick: bool = False
) -> str:
    """The whole document."""
    lines = [
        "# Performance",
        "",
        "Written by `python -m experiments.bench`; do not edit by hand, re-run it.",
        "",
        "**Timings come from a shared machine** (other engineers' experiments were running): "
        "absolute seconds vary from run to run, so every comparison below is a ratio of two "
        "numbers measured in the same bench run, close together in time (interleaved where "
        "possible), and repeated measurements are summarised by their median or minimum.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: smoke-test sizes, not the targets' configurations.**", ""]
    lines += ["## Machine", ""]
    lines += table(
        ["item", "value"],
        [
            ["CPU", machine.get("cpu", "?")],
            ["cores", machine.get("cores", "?")],
            ["RAM", f"{machine.get('ram_gib', '?')} GiB"],
            ["load average at start (1, 5, 15 min)", machine.get("load_avg", "?")],
            ["OS", machine.get("os", "?")],
            ["Python", machine.get("python", "?")],
            ["torch", machine.get("torch", "?")],
            ["flwr", machine.get("flwr", "?")],
            ["ray", machine.get("ray", "?")],
            ["numpy", machine.get("numpy", "?")],
            ["commit", machine.get("commit", "?")],
            ["date", machine.get("date", "?")],
        ],
    )
    lines += ["## Targets", "", *targets_table(sections)]
    for name in ORDER:
        if name in sections:
            lines += RENDERERS[name](sections[name], machine)
    lines += ["## Commands", "", "```", *list(COMMANDS.values()), "```", ""]
    rows = [
        [
            name,
            fmt(sections[name].get("seconds"), 0),
            sections[name].get("measured_at", ""),
            sections[name].get("load_avg_after", ""),
        ]
        for name in ORDER
        if name in sections
    ]
    total = sum(sections[n].get("seconds", 0.0) for n in ORDER if n in sections)
    rows.append(["**total**", fmt(total, 0), "", ""])
    lines += [
        "Section durations (s) and the machine's load average when each ended:",
        "",
        *table(["section", "seconds", "measured at", "load average after"], rows),
    ]
    return "\n".join(lines)


def plot(sections: dict[str, dict[str, Any]], directory: Path = PLOTS) -> list[Path]:
    """Per-round times (Flower vs bare) and time per round vs sampled clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    ov = sections.get("overhead", {})
    if ov.get("flower") and ov.get("bare"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for tag, f in ov["flower"].items():
            ax.plot(
                range(1, len(f["round_seconds"]) + 1),
                f["round_seconds"],
                marker=".",
                label=f"Flower {tag}",
            )
        b = [r["seconds"] for r in ov["bare"]["rounds"]]
        ax.plot(range(1, len(b) + 1), b, marker=".", label="bare loop")
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
        ax.set_title("Round time, `make run` config")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, directory / "overhead_rounds.png"))
    sc = sections.get("scale", {})
    if sc.get("points"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [p[0] for p in sc["points"]]
        ys = [p[1] for p in sc["points"]]
        ax.plot(xs, ys, "o", label="measured (warm median)")
        fit = sc.get("fit", {})
        if fit:
            ax.plot(
                xs, [fit["slope"] * x + fit["intercept"] for x in xs], "-", label="least squares"
            )
        ax.set_xlabel("clients sampled per round")
        ax.set_ylabel("training round, s")
        ax.set_title(f"{sc.get('clients')} clients, SynthCorr")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, directory / "scale_rounds.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _span(pair: Sequence[float] | None) -> str:
    return f" ({fmt(pair[0], 2)}–{fmt(pair[1], 2)})" if pair else ""


def _median(values: Sequence[float]) -> float:
    from experiments.bench.stats import median

    return median(values)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
