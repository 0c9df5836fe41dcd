"""`fedmtl-run` (and `make run`): one federated simulation on this machine, end to end.

Starts a SuperLink and a Ray head of its own (side by side), submits the app, shows one line
per round, prints the final metrics, stops everything it started, and exits 1 when the run
failed (`flwr run` itself exits 0 either way) with the reason in one line: each distinct
client error once, with the clients that hit it. With `--ray-address` the run attaches to a
Ray cluster that is already running (its nodes may be other machines) and leaves it running.
"""

from __future__ import annotations

import argparse
import sys

from common.config import CHOICES, RunConfig, parse_run_config
from deploy.raycluster import ADDRESS_FORMS, resolve_ray_address
from deploy.runs import parse_overrides, report_outcome
from deploy.simulation import HEAD, gpus_for, run_simulation

DESCRIPTION = """\
Run one federated multi-task simulation on this machine: a Flower server and one client
per simulated site, each client training its own task heads on its own data while the
server averages the shared encoder. Prints a line per round, then the final test metrics
per task and where the results are (summary.json, metrics.jsonl, plots, flower.log).
Exits 0 when the run completed, 1 when it failed (the reason in one line), 2 on a bad
option."""

EPILOG = f"""\
main run-config keys (-c key=value; every key and its default: README.md, "Changing a
run", or [tool.flwr.app.config] in pyproject.toml):
  dataset            {", ".join(CHOICES["dataset"])}
  algorithm          {", ".join(CHOICES["algorithm"])}
  weighting          {", ".join(CHOICES["weighting"])}
  num-clients, num-server-rounds, local-epochs, lr, seed, results-dir
  data-file, schema-file   your own CSV/NPZ and its task schema (dataset=user)

examples:
  fedmtl-run -c num-server-rounds=5 -c algorithm=fedrep
  fedmtl-run --quiet -c dataset=user -c data-file=deploy/sample-data/site-a.csv \\
      -c schema-file=deploy/sample-data/site-a.schema.json -c num-clients=3
  fedmtl-run --ray-address auto          # the cluster `ray start --head` started here
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmtl-run",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="override a run-config key: -c key=value (repeatable)",
    )
    parser.add_argument(
        "--cpus-per-client", type=int, default=1, help="Ray CPUs per simulated client (default 1)"
    )
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
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only the start line, the final table (one row per task) or the failure, "
        "and the results path",
    )
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
    return report_outcome(outcome, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
