"""Section 1 of docs/PERFORMANCE.md: Flower against the bare loop, the probe app, the
simulation knobs."""

from __future__ import annotations

from typing import Any

from common.config import parse_run_config
from experiments.bench.flower import PROBE_PAYLOAD
from experiments.bench.stats import median
from experiments.bench.text import fact, federation_changes, federation_option, fmt, span, table


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
                fmt(r.get("including_startup"), 2, "×") + span(r.get("including_startup_range")),
                fmt(r.get("excluding_startup"), 2, "×") + span(r.get("excluding_startup_range")),
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
                fmt(median([r["seconds"] for r in warm]), 3),
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
        return median([v for k, v in p["wave_median_s"].items() if int(k) <= 2])

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
                fmt(pfl[f"{tag}_ratio"], 2, "×") + span(pfl[f"{tag}_ratio_range"]),
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
    return 2 * median(small) + 2 * clients * max(per_call, 0.0)
