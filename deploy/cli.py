"""`fedmtl-run` (and `make run`): one simulation of the app, end to end, reported honestly.

Starts a SuperLink and a Ray head of its own (side by side), submits the app, shows one line
per round, prints the final metrics, stops everything it started, and exits non-zero when the
run failed (`flwr run` itself exits 0 either way). With `--ray-address` the run attaches to a
Ray cluster that is already running (its nodes may be other machines) and leaves it running.

    fedmtl-run -c num-server-rounds=5 -c algorithm=local
    fedmtl-run --ray-address auto          # the cluster `ray start --head` started here
    fedmtl-run --ray-address 10.0.0.5:6379 # a cluster's head elsewhere
"""

from __future__ import annotations

import argparse
import sys

from common.config import RunConfig, parse_run_config
from deploy.raycluster import ADDRESS_FORMS, resolve_ray_address
from deploy.runs import parse_overrides, report_outcome
from deploy.simulation import HEAD, gpus_for, run_simulation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="override a run-config key: -c key=value (repeatable)",
    )
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument(
        "--gpus-per-client",
        type=float,
        default=None,
        help="fraction of a GPU per virtual client (Ray's client-resources-num-gpus); "
        "default: this machine's GPUs shared by the clients that run at once when the run's "
        "device is CUDA, else 0",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help=f"attach to a running Ray cluster: {ADDRESS_FORMS}; default: start a Ray head "
        "for this run and stop it at the end",
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        help="CPUs the launcher's own Ray head offers (default: all cores)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.run_config)
        cfg: RunConfig = parse_run_config(overrides)
        if args.ray_cpus is not None and args.ray_address is not None:
            raise ValueError(
                "--ray-cpus sizes the launcher's own Ray head; an existing cluster "
                "(--ray-address) has the resources its nodes offer"
            )
        if args.ray_cpus is not None and args.ray_cpus < 1:
            raise ValueError(f"--ray-cpus must be at least 1, got {args.ray_cpus}")
        if args.ray_address is not None:
            resolve_ray_address(args.ray_address)  # a clear error before anything starts
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"fedmtl: {cfg.name}: {cfg.dataset}, {cfg.num_clients} clients, "
        f"{cfg.num_server_rounds} rounds, algorithm {cfg.algorithm}, weighting {cfg.weighting}"
    )
    try:
        gpus_for(cfg, args.cpus_per_client, args.gpus_per_client)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    outcome = run_simulation(
        overrides,
        cpus_per_client=args.cpus_per_client,
        gpus_per_client=args.gpus_per_client,
        ray=args.ray_address or HEAD,
        ray_cpus=args.ray_cpus,
        echo=not args.quiet,
    )
    return report_outcome(outcome)


if __name__ == "__main__":
    sys.exit(main())
