"""Sections 2-5 of docs/PERFORMANCE.md: scale, aggregation, communication, deployment."""

from __future__ import annotations

from typing import Any

from common.config import parse_run_config
from experiments.bench.communication import CLASSIFICATION, PARALLEL
from experiments.bench.deployment import BOTH_POLL_KEY, GRID_POLL_KEY, POLL_S, breakdown_lines
from experiments.bench.sampling import MEMORY_INTERVAL_S
from experiments.bench.text import fact, fmt, mean, table


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
        f"{s.get('algorithm_rounds')} rounds. Nothing in this section is timed: seeds fix "
        f"bytes and accuracies ({PARALLEL} run(s) at a time).",
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
                fmt(mean([r["bytes_up_per_client_round"] for r in c["runs"]]), 0),
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
            for k in ("tls", "tls_process", GRID_POLL_KEY, BOTH_POLL_KEY)
            if k in s and "round_seconds" in s[k]
        }
    )
    variants = " or ".join(map(str, variant_rounds)) or "?"
    out = [
        "## 5. Deployment latency",
        "",
        f"{run_cfg.num_clients} clients, default {run_cfg.dataset} config; a round is one "
        "message wave (each round's evaluation rides on the next round's training; the last "
        "round adds an evaluation wave). Loopback deployment (`LocalDeployment`, "
        "subprocess isolation: every message starts a fresh ClientApp process, so all its "
        f"rounds are alike; the variants run {variants} round(s)) vs Flower's simulation of the "
        f"same config ({sim_rounds} rounds: round 1 is cold, later ones warm).",
        "",
    ]
    rows = []
    for key, label in (
        ("simulation", "simulation"),
        ("before", "deployment, TLS + node auth, before (patched copy)"),
        ("insecure", "deployment, insecure"),
        ("tls", "deployment, TLS + node auth"),
        ("tls_process", "deployment, TLS + node auth, process isolation"),
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
    out += breakdown_lines(s)
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
            f"(hard-coded), SuperExec looks for tasks every {fact('superexec_poll_s')} s "
            f"(`deploy.local` and the compose files set {POLL_S:g} s), and the ServerApp's "
            f"`HttpGrid.send_and_receive` sleeps {fact('http_grid_pull_s')} s between pulls "
            f"(fedmtl's `MeteredGrid` pulls every {POLL_S:g} s instead). All "
            f"{run_cfg.num_clients} nodes start their processes at once on "
            f"{machine.get('cores', '?')} cores.",
            "",
        ]
    return out
