"""The Ray cluster a simulation runs its ClientApps on: a head this process starts and stops
(plus, for tests and trials, worker nodes on the same machine), or a running cluster that
someone else started and stops.

Flower's simulation process calls `ray.init()` for every run. Without an address that starts
a new local Ray instance (seconds: GCS, raylet, agents) and stops it at the end of the run;
with one it attaches to the cluster as a driver, and its actors run on that cluster's nodes.
Ray reads the address from the RAY_ADDRESS environment variable: flwr 1.42 cannot carry one
in the federation config (its `SimulationConfig` holds only `init-args-num-cpus`,
`-num-gpus`, `-logging-level` and `-log-to-driver`), so the engine sets RAY_ADDRESS in the
SuperLink's environment, which the simulation processes inherit.

A head started here uses `ray start --head --block` in a session of its own, with its own
temp dir and ports, so it is stopped by its process group (then any descendant that left
it) and never by `ray stop`, which would stop every Ray instance of the user.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from deploy.processes import LOOPBACK, free_port, stop_tree, tail
from deploy.runs import STATE

ADDRESS_FORMS = "'auto' (the cluster `ray start` last started on this machine) or HOST:PORT"
READY = "Ray runtime started"  # what `ray start` prints once the node is up
# A Ray session's socket paths are about 65 bytes below its temp dir (`<base>/ray-XXXXXXXX/ray`
# here); AF_UNIX allows 107.
MAX_TEMP_BASE = 25


class RayAddressError(ValueError):
    """A `--ray-address` that is malformed or where no Ray cluster answers."""


def parse_ray_address(value: str) -> str:
    """`value` if it has the form of a Ray cluster address ('auto' or HOST:PORT); else a
    RayAddressError that names the valid forms."""
    text = value.strip()
    if text == "auto":
        return text
    if "://" in text:
        raise RayAddressError(
            f"--ray-address '{value}': Ray Client addresses (ray://...) are not supported: "
            "the simulation runs as a driver on a node of the cluster; give the head's "
            f"address instead: {ADDRESS_FORMS}"
        )
    host, sep, port = text.rpartition(":")
    if not sep or not host or " " in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(
            f"--ray-address '{value}' is not a Ray cluster address; give {ADDRESS_FORMS}, "
            "e.g. 127.0.0.1:6379"
        )
    return text


def current_cluster_file(env: dict[str, str] | None = None) -> Path:
    """Where `ray start` records the address of the cluster it started last (Ray's own rule:
    $RAY_TMPDIR, else $TMPDIR, else /tmp, then `ray/ray_current_cluster`)."""
    env = dict(os.environ) if env is None else env
    base = env.get("RAY_TMPDIR") or env.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def resolve_ray_address(value: str, env: dict[str, str] | None = None) -> str:
    """HOST:PORT of a running cluster for `--ray-address value` ('auto' is looked up as Ray
    does); a RayAddressError when the form is wrong or nothing listens there."""
    address = parse_ray_address(value)
    if address == "auto":
        recorded = current_cluster_file(env)
        if not recorded.exists():
            raise RayAddressError(
                f"--ray-address auto: no Ray cluster was started on this machine ({recorded} "
                "does not exist); start one with `ray start --head` or give HOST:PORT"
            )
        address = parse_ray_address(recorded.read_text().strip())
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass
    except OSError as err:
        raise RayAddressError(
            f"--ray-address {value}: no Ray cluster answers at {address} ({err}); start its "
            "head with `ray start --head --port <port>` or give the address it printed"
        ) from None
    return address


def private_temp_dir() -> Path:
    """A fresh directory for one cluster's files (its RAY_TMPDIR): under the repository's
    ignored `.state/` when Ray's socket paths below it fit the AF_UNIX limit, else under the
    system temp dir. Never Ray's shared default, where `ray start` would record this cluster
    as the one `auto` finds for every other user of the machine."""
    STATE.mkdir(exist_ok=True)
    base = STATE if len(str(STATE)) <= MAX_TEMP_BASE else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="ray-", dir=base))


class RayCluster:
    """A Ray head on this machine, started by `start` and stopped, with every node and
    worker it started, by `stop`. `add_node` joins a worker node with resources of its own
    on the same machine (a stand-in for a second machine in tests and trials).

        cluster = RayCluster(num_cpus=2, env=flower_env())
        cluster.start(); cluster.wait_ready()
        env["RAY_ADDRESS"] = cluster.address   # Flower's simulations attach to it
        ...
        cluster.stop()
    """

    def __init__(
        self,
        num_cpus: int | None = None,
        *,
        env: dict[str, str],
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.num_cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
        self.num_gpus = num_gpus
        self.resources = resources or {}
        # Ray's own layout below RAY_TMPDIR: `ray/` holds the sessions and the address file
        # that `--ray-address auto` reads (with RAY_TMPDIR set to `tmpdir`).
        self.tmpdir = private_temp_dir()
        self.temp_dir = self.tmpdir / "ray"
        self.env = {**env, "RAY_TMPDIR": str(self.tmpdir)}
        self.env.pop("RAY_ADDRESS", None)  # the head must not attach to another cluster
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.nodes: list[tuple[subprocess.Popen, Path]] = []

    def start(self) -> RayCluster:
        """Start the head and return at once (`wait_ready` waits for it): the caller can
        start other processes meanwhile."""
        head = [
            "--head",
            "--port",
            str(self.port),
            "--ray-client-server-port",
            str(free_port()),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ]
        self._spawn(head, self.num_cpus, self.num_gpus, self.resources, "head")
        return self

    def add_node(
        self,
        num_cpus: int,
        *,
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        """Join a worker node (its own raylet and resources) to the head, on this machine;
        returns once it is up."""
        self._spawn(
            ["--address", self.address],
            num_cpus,
            num_gpus,
            resources or {},
            f"node-{len(self.nodes)}",
        )
        self.wait_ready()

    def _spawn(
        self,
        role: list[str],
        num_cpus: int,
        num_gpus: int | None,
        resources: dict[str, float],
        name: str,
    ) -> None:
        cmd = [
            "ray",
            "start",
            *role,
            "--block",
            "--node-ip-address",
            LOOPBACK,
            "--num-cpus",
            str(num_cpus),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--temp-dir",
            str(self.temp_dir),
        ]
        if num_gpus is not None:
            cmd += ["--num-gpus", str(num_gpus)]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        log_path = self.tmpdir / f"{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: stopped as one, never by `ray stop`
            )
        self.nodes.append((proc, log_path))

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until every node started so far says it is up; an error with its log when
        one exits or does not come up in `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for proc, log_path in self.nodes:
            while READY not in log_path.read_text(errors="replace"):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"`ray start` exited with code {proc.returncode}:\n{tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Ray node not up after {timeout:.0f}s:\n{tail(log_path)}")
                time.sleep(0.1)

    def pids(self) -> list[int]:
        """The `ray start` processes (one per node), for checks that they are gone."""
        return [proc.pid for proc, _ in self.nodes]

    def stop(self) -> None:
        """Stop the worker nodes, then the head (each with everything below it: raylet,
        GCS, agents, workers), and remove the temp dir."""
        for proc, _ in reversed(self.nodes):
            stop_tree(proc)
        self.nodes.clear()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
