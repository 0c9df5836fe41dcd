"""Run the Flower app through the Simulation Engine, end to end, and report honestly.

`flwr run` exits 0 even when the run failed and leaves a managed SuperLink running. The engine
starts its own SuperLink (simulation mode, loopback, a free port) with a private FLWR_HOME,
submits the app with `flwr run --stream`, checks the run's status in `summary.json` and in
`flwr ls`, and stops the SuperLink it started (whole process group) on exit. `make run`, the
studies and the tests all run simulations through it.

Ray: by default the engine starts one Ray head of its own next to the SuperLink and every run
attaches to it, so a study of many runs starts Ray once, not once per run; it can instead
attach to a cluster that is already running (`ray="auto"` or `"HOST:PORT"`), whose nodes
may be other machines, or leave Ray to Flower, which starts and stops it in every run
(`ray="per-run"`, the only mode in which `init-args-*` federation options apply).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import RunConfig, parse_run_config
from deploy.processes import LOOPBACK, flower_env, free_port, stop_tree, wait_healthy
from deploy.raycluster import RayCluster, parse_ray_address, resolve_ray_address
from deploy.runs import (
    REPO,
    STATE,
    Lines,
    Outcome,
    Streamed,
    flower_status,
    flwr_run_command,
    prepare_results,
    read_outcome,
    stage_app,
    stream_run,
    toml_value,
    write_flwr_config,
    write_run_config,
)

CONNECTION = "fedmtl-sim"  # the connection name in the engine's FLWR_HOME
HEAD, PER_RUN = "head", "per-run"  # `SimulationEngine(ray=...)`: besides a cluster address
SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"
# Options of `ray.init` that only a new Ray instance takes: an existing cluster's nodes fix them.
NEW_INSTANCE_ONLY = ("init-args-num-cpus", "init-args-num-gpus")


def check_ray_mode(ray: str) -> str:
    """`ray` if it is 'head', 'per-run' or a cluster address ('auto' or HOST:PORT)."""
    if ray in (HEAD, PER_RUN):
        return ray
    try:
        return parse_ray_address(ray)
    except ValueError as err:
        raise ValueError(f"ray = '{ray}': valid: '{HEAD}', '{PER_RUN}', or {err}") from None


def federation_config(
    num_supernodes: int, cpus_per_client: float, gpus_per_client: float = 0.0, **extra: Any
) -> str:
    """The `--federation-config` string; `extra` keys use Flower's names with '_' or '-'
    (e.g. `init_args_num_cpus=4`)."""
    items = {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": cpus_per_client,
        "client-resources-num-gpus": gpus_per_client,
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    return " ".join(f"{k}={toml_value(v)}" for k, v in items.items())


class SimulationEngine:
    """A SuperLink in simulation mode (loopback, free port, private FLWR_HOME) that runs one
    or more apps in turn; stopped, with everything it started, on exit.

        with SimulationEngine() as engine:
            for overrides in grid:
                outcome = engine.run(overrides)
    """

    def __init__(
        self,
        app_dir: Path | None = None,
        cpus_per_client: int | float = 1,
        *,
        gpus_per_client: float | None = None,
        ray: str = HEAD,
        ray_cpus: int | None = None,
    ) -> None:
        # None: submit a fresh slim copy of this repository's app for every run (`stage_app`).
        self.app_dir = app_dir
        # Ray resources of each ClientApp actor: as many actors run at once as fit the nodes
        # (a GPU fraction lets several share one GPU; CPUs must be whole in flwr 1.42).
        self.cpus_per_client = cpus_per_client
        self.gpus_per_client = gpus_per_client  # None: `gpus_for` decides per run
        # 'head': a Ray head of the engine's own (`ray_cpus` CPUs, default all); 'per-run':
        # Flower starts Ray in every run; 'auto' or HOST:PORT: attach to a running cluster.
        self.ray = check_ray_mode(ray)
        if ray_cpus is not None and self.ray != HEAD:
            raise ValueError(
                f"ray_cpus sizes the engine's own Ray head; with ray = '{ray}' it has none"
            )
        self.ray_cpus = ray_cpus
        self.ray_address: str | None = None  # the cluster the runs attach to, if any
        self.cluster: RayCluster | None = None
        self.superlink: subprocess.Popen | None = None

    def __enter__(self) -> SimulationEngine:
        STATE.mkdir(exist_ok=True)
        self.env = flower_env()
        self.env.pop("RAY_ADDRESS", None)  # 'per-run' means a new Ray instance per run
        # The SuperLink's SuperExec looks for a submitted run every second by default: on
        # average half a second of every run's start. Flower reads this interval from here.
        self.env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S)
        if self.ray not in (HEAD, PER_RUN):  # refuse a wrong address before starting anything
            self.ray_address = resolve_ray_address(self.ray)
        self.home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=STATE))
        self.env["FLWR_HOME"] = str(self.home)
        self.superlink_log = open(self.home / "superlink.log", "w")
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        """The Ray head (if the engine has one) and the SuperLink, started side by side."""
        if self.ray == HEAD:
            self.cluster = RayCluster(self.ray_cpus, env=self.env).start()
            self.ray_address = self.cluster.address
            self.env["RAY_TMPDIR"] = str(self.cluster.tmpdir)
        if self.ray_address is not None:
            self.env["RAY_ADDRESS"] = self.ray_address  # read by `ray.init()` in every run
        port = free_port()
        write_flwr_config(self.home, CONNECTION, f"{LOOPBACK}:{port}", None)
        self.superlink = subprocess.Popen(
            [
                "flower-superlink",
                "--insecure",
                "--simulation",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=self.env,
            cwd=str(self.app_dir or REPO),  # relative paths in a run config resolve here
            stdout=self.superlink_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_healthy(port, self.superlink)
        if self.cluster is not None:
            self.cluster.wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.superlink is not None:
            stop_tree(self.superlink)  # with the simulation processes that left its group
            self.superlink = None
        if self.cluster is not None:  # after the SuperLink: no run is left to use it
            self.cluster.stop()
            self.cluster = None
        self.superlink_log.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def app_path(self) -> Path:
        """The directory to submit: the given one, or a fresh slim copy of the repository's
        app (fresh per run, so edits between runs are picked up as `flwr run .` would). Each
        copy has a directory of its own: runs submitted from several threads at once must
        not restage a copy that another submission is still packing."""
        if self.app_dir:
            return self.app_dir
        return stage_app(Path(tempfile.mkdtemp(prefix="app-", dir=self.home)))

    def submit(
        self,
        app_dir: Path,
        run_config: dict[str, Any],
        federation: str,
        log_path: Path,
        *,
        timeout: float | None = None,
        echo: bool = False,
        stop_when: Callable[[Lines], bool] | None = None,
        timestamps: bool = False,
    ) -> Streamed:
        """Submit the app in `app_dir` with `run_config` and `--federation-config
        federation`; stream it until it ends, `timeout` or `stop_when` (`stream_run`)."""
        if self.superlink is None:
            raise RuntimeError("submit inside `with SimulationEngine() as engine`")
        fixed = [k for k in NEW_INSTANCE_ONLY if f"{k}=" in federation]
        if fixed and self.ray_address is not None:
            raise ValueError(
                f"federation option(s) {fixed} size a new Ray instance, but this engine's runs "
                f"attach to the cluster at {self.ray_address}, whose nodes fix the resources; "
                f"use SimulationEngine(ray='{PER_RUN}') for them"
            )
        conf = write_run_config(self.home / f"run-config-{time.time_ns()}.toml", run_config)
        cmd = flwr_run_command(app_dir, CONNECTION, conf, federation)
        return stream_run(
            cmd,
            self.env,
            log_path,
            timeout=timeout,
            echo=echo,
            stop_when=stop_when,
            timestamps=timestamps,
        )

    def status(self, run_id: str) -> str:
        """The run's status as this engine's SuperLink records it."""
        return flower_status(self.env, CONNECTION, run_id)

    def run(
        self,
        overrides: dict[str, Any] | None = None,
        *,
        echo: bool = True,
        timeout: float | None = None,
    ) -> Outcome:
        """Run the app once with `overrides` of the run config; wait for it to finish."""
        overrides, cfg, results_dir = prepare_results(dict(overrides or {}))
        overrides["state-dir"] = str(client_state_dir(cfg, results_dir))
        log_path = results_dir / "flower.log"
        gpus = gpus_for(cfg, self.cpus_per_client, self.gpus_per_client)
        fed = federation_config(cfg.num_clients, self.cpus_per_client, gpus)
        streamed = self.submit(
            self.app_path(), overrides, fed, log_path, timeout=timeout, echo=echo
        )
        if streamed.expired:
            raise TimeoutError(f"simulation did not finish within {timeout:.0f}s; see {log_path}")
        return read_outcome(results_dir, log_path, streamed.wall_s, self.status(streamed.run_id))


def gpus_for(cfg: RunConfig, cpus_per_client: float, gpus_per_client: float | None) -> float:
    """The GPU fraction each virtual client asks Ray for: the given one, else a share of this
    machine's GPUs when the run's `device` resolves to CUDA here (0 otherwise). The clients
    train on this machine, so a `device` it lacks fails here, before anything starts."""
    from common.device import check_amp, default_gpus_per_client, resolve_device

    check_amp(cfg.amp, resolve_device(cfg.device))
    if gpus_per_client is not None:
        return gpus_per_client
    return default_gpus_per_client(cfg.device, cfg.num_clients, cpus_per_client)


def client_state_dir(cfg: RunConfig, results_dir: Path) -> Path:
    """Where the simulated clients keep their private state: `state-dir` when given, else
    `<results-dir>/<run-name>/client-state`, so that `resume = true` finds it. A new run
    (not a resume) under that default starts from empty state, as a new run should."""
    if cfg.state_dir:
        return Path.cwd() / cfg.state_dir
    default = results_dir / "client-state"
    if not cfg.resume:
        shutil.rmtree(default, ignore_errors=True)
    return default


def run_simulation(
    overrides: dict[str, Any] | None = None,
    *,
    app_dir: Path | None = None,
    cpus_per_client: int | float = 1,
    gpus_per_client: float | None = None,
    ray: str = HEAD,
    ray_cpus: int | None = None,
    echo: bool = True,
    timeout: float | None = None,
) -> Outcome:
    """Run the app once in the Simulation Engine with `overrides` of the run config; the
    other options as for `SimulationEngine`."""
    cfg = parse_run_config(dict(overrides or {}))  # fail fast, before any process starts
    gpus_for(cfg, cpus_per_client, gpus_per_client)
    t0 = time.perf_counter()
    engine = SimulationEngine(
        app_dir, cpus_per_client, gpus_per_client=gpus_per_client, ray=ray, ray_cpus=ray_cpus
    )
    with engine:
        outcome = engine.run(overrides, echo=echo, timeout=timeout)
    outcome.wall_time_s = time.perf_counter() - t0  # includes starting and stopping everything
    return outcome
