"""A real Flower deployment on this machine: SuperLink, N SuperNodes, `flwr run`, results.

Everything a multi-host deployment has, on loopback: TLS on the SuperLink (certificates from
`deploy.certs`), SuperNode authentication (each node's public key registered with
`flwr supernode register` before the node starts), one node config per SuperNode
(partition, state dir), one FLWR_HOME per process, a log file per process, and every process
stopped by PID / process group at the end. It exists to try a deployment end to end in a
minute, to test one (tests/test_deploy.py), and as the single source of the SuperLink,
SuperNode and SuperExec flags and environment: `superlink_args`, `supernode_args`,
`superexec_args` and `superexec_env` build every command line, and a test checks
docker-compose.yml against them.

Flower's waits, as 1.42 lets a user set them (docs/DEPLOYMENT.md has the list): SuperExec's
task poll (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`, 1 s by default) is set to `TASK_POLL_S`
for every SuperExec, those Flower starts itself (subprocess isolation) included: they inherit
the environment. The ServerApp's reply pulls are `server.metered_grid`'s own. An idle
SuperNode's 3 s poll of the SuperLink has no setting.

    python -m deploy.local run --nodes 3 -c num-server-rounds=5   # up, run, summary, down
    python -m deploy.local up --nodes 3       # keep it up (Ctrl-C stops it); submit runs with
                                              # the FLWR_HOME and connection it prints
    python -m deploy.local run --insecure     # no TLS, no node auth: local development only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from common.config import ConfigError, parse_run_config
from deploy.certs import CertFiles, generate, node_key_path
from deploy.flower_args import (
    TASK_POLL_S,
    ServerTls,
    node_config,
    superexec_args,
    superexec_env,
    superlink_args,
    supernode_args,
)
from deploy.processes import (
    LOOPBACK,
    flower_env,
    free_port,
    signals_held,
    stop_tree,
    tail,
    wait_healthy,
)
from deploy.runs import (
    REPO,
    STATE,
    Outcome,
    flower_status,
    flwr_run_command,
    parse_overrides,
    prepare_results,
    read_outcome,
    report_outcome,
    stage_app,
    stream_run,
    write_flwr_config,
    write_run_config,
)

CONNECTION = "fedmtl-local"  # the connection name in this deployment's FLWR_HOME
ISOLATIONS = ("subprocess", "process")


# --- the deployment ---


@dataclass
class LocalDeployment:
    """A SuperLink and `nodes` authenticated SuperNodes on loopback; a context manager that
    stops every process it started, whatever happens in between.

    TLS is the default: without `certs` a fresh CA and keys are made in the run dir.
    `insecure=True` (no TLS, no node authentication) must be asked for explicitly.
    `isolation` is Flower's: `subprocess` (the SuperLink and each SuperNode start their own
    SuperExec) or `process` (this class starts one SuperExec per SuperNode and one for the
    ServerApp, as the compose file does). `task_poll_interval`: every SuperExec's (None:
    Flower's default).
    """

    nodes: int
    run_dir: Path
    certs: CertFiles | None = None
    insecure: bool = False
    state_dir: Path | None = None
    echo: bool = True
    isolation: str = "subprocess"
    task_poll_interval: float | None = TASK_POLL_S
    port: int = field(default=0, init=False)
    home: Path = field(init=False)  # the CLI's FLWR_HOME (its connection config)
    logs: Path = field(init=False)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    _logs: list[Any] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a deployment needs at least one SuperNode")
        if self.insecure and self.certs is not None:
            raise ValueError("--insecure and certificates exclude each other")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation '{self.isolation}' is not one of {list(ISOLATIONS)}")
        self.run_dir = Path(self.run_dir).resolve()
        self.state_dir = Path(self.state_dir or self.run_dir / "state").resolve()
        self.home = self.run_dir / "flwr-home"
        self.logs = self.run_dir / "logs"

    # lifecycle

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """SuperLink, key registration, SuperNodes; returns when all nodes are online."""
        for d in (self.run_dir, self.home, self.logs, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            if self.certs is None:
                self.certs = generate(self.run_dir / "certs", ["localhost", LOOPBACK], self.nodes)
            check_certs(self.certs, self.nodes)
        self.port = free_port()
        write_flwr_config(self.home, CONNECTION, self.address, self._ca())
        tls = None if self.certs is None else ServerTls.from_files(self.certs)
        self._say(f"SuperLink on {self.address} ({'TLS + node auth' if tls else 'INSECURE'})")
        proc = self._spawn(
            "superlink",
            "flower-superlink",
            superlink_args(
                host=LOOPBACK,
                port=self.port,
                tls=tls,
                database=None,  # in memory: a fresh federation (and node list) every time
                isolation=self.isolation,
            ),
        )
        self._wait_superlink(proc, timeout)
        if self.isolation == "process":
            runtime = superexec_args(runtime_api=self.address, root_certificates=self._ca())
            self._spawn("superexec-serverapp", "flower-superexec", runtime)
        for i in range(self.nodes):
            if self.certs is not None:
                self.register(self.certs.node_keys[i].with_suffix(".pub"), f"supernode-{i}")
        for i in range(self.nodes):
            key = None if self.certs is None else self.certs.node_keys[i]
            self.start_supernode(i, key=key)
        self.wait_online(self.nodes, timeout)
        self._say(f"{self.nodes} SuperNodes online; logs in {self.logs}")

    def stop(self) -> None:
        """SuperNodes (and SuperExecs) first (no reconnect storm), then the SuperLink; by
        process group, then by PID for whatever left the group. Idempotent."""
        nodes = [p for name, p in self.procs.items() if name != "superlink"]
        with signals_held(), ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            list(pool.map(stop_tree, nodes))
            if "superlink" in self.procs:
                stop_tree(self.procs["superlink"])
        for f in self._logs:
            f.close()
        self._logs.clear()

    # pieces (public: tests and `up` use them)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def cli_env(self) -> dict[str, str]:
        env = flower_env()
        env["FLWR_HOME"] = str(self.home)
        return env

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this deployment."""
        return subprocess.run(
            ["flwr", *args],
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def register(self, public_key: Path, name: str) -> None:
        """`flwr supernode register`; idempotent (a key the SuperLink already holds counts
        as registered)."""
        out = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name)
        if out.returncode != 0 and "already in use" not in out.stdout + out.stderr:
            raise RuntimeError(f"registering {public_key} failed:\n{out.stdout}{out.stderr}")

    def start_supernode(
        self, index: int, *, key: Path | None, num_partitions: int | None = None
    ) -> subprocess.Popen:
        """Start SuperNode `index` (partition `index` of `num_partitions`, default: the
        deployment's size) with its own state dir, FLWR_HOME, Runtime API port and log; in
        process isolation also its ClientApp SuperExec (`superexec-<index>`)."""
        name = f"supernode-{index}"
        state = self.state_dir / name
        state.mkdir(parents=True, exist_ok=True)
        port = free_port()
        args = supernode_args(
            superlink=self.address,
            node_config=node_config(index, num_partitions or self.nodes, state_dir=str(state)),
            port=port,
            root_certificates=self._ca(),
            auth_key=None if key is None else str(key),
            isolation=self.isolation,
        )
        proc = self._spawn(name, "flower-supernode", args)
        if self.isolation == "process":
            # The node's Runtime API is plain HTTP on loopback, as in the compose network.
            runtime = superexec_args(runtime_api=f"{LOOPBACK}:{port}", root_certificates=None)
            if (old := self.procs.get(f"superexec-{index}")) is not None:
                stop_tree(old)  # it served the node's previous Runtime API port
            self._spawn(f"superexec-{index}", "flower-superexec", runtime)
        return proc

    def online_nodes(self) -> int:
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            nodes = json.loads(out.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {proc.returncode}:\n"
                        + tail(self.logs / f"{name}.log")
                    )
            if self.online_nodes() >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {count} SuperNodes online after {timeout:.0f}s")

    def submit(
        self,
        overrides: dict[str, Any] | None = None,
        timeout: float = 900.0,
        app_dir: Path | None = None,
    ) -> Outcome:
        """`flwr run` the app (a slim copy of this repository's, or `app_dir`) with run-config
        `overrides`, wait for it, read its status from `summary.json` and from `flwr ls`."""
        overrides, cfg, results_dir = prepare_results(
            {"num-clients": self.nodes, **(overrides or {})}
        )
        run_config = write_run_config(self.home / f"run-config-{time.time_ns()}.toml", overrides)
        log_path = self.logs / f"flwr-run-{cfg.name}.log"
        app = app_dir or stage_app(self.home / "app")  # slim: the FAB build walks the whole dir
        cmd = flwr_run_command(app, CONNECTION, run_config)
        streamed = stream_run(cmd, self.cli_env(), log_path, echo=self.echo, timeout=timeout)
        if streamed.expired:
            raise TimeoutError(f"the run did not finish within {timeout:.0f}s; see {log_path}")
        status = self.flower_status(streamed.run_id)
        return read_outcome(results_dir, log_path, streamed.wall_s, status)

    def flower_status(self, run_id: str = "") -> str:
        """Status of run `run_id` (default: the latest) as the SuperLink reports it (`flwr
        run` exits 0 even when the run failed)."""
        return flower_status(self.cli_env(), CONNECTION, run_id)

    # internals

    def _ca(self) -> str | None:
        return None if self.certs is None else str(self.certs.ca_cert)

    def _spawn(self, name: str, exe: str, args: list[str]) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        home = self.run_dir / "homes" / name  # a node's installed apps are its own
        home.mkdir(parents=True, exist_ok=True)
        env = flower_env() | superexec_env(self.task_poll_interval)
        env["FLWR_HOME"] = str(home)
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        log.write(f"$ {exe} {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            [exe, *args],
            env=env,
            cwd=str(self.run_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        self.procs[name] = proc
        return proc

    def _wait_superlink(self, proc: subprocess.Popen, timeout: float) -> None:
        try:
            if self.certs is None:
                wait_healthy(self.port, proc, timeout)
            else:
                wait_healthy(self.port, proc, timeout, ca_cert=str(self.certs.ca_cert))
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}:\n{tail(self.logs / 'superlink.log')}") from None

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"deploy: {text}", flush=True)


def check_certs(files: CertFiles, nodes: int) -> None:
    """Fail before starting anything when a file is missing or the SuperLink certificate
    is not valid for the address the nodes dial here."""
    needed = [files.ca_cert, files.server_cert, files.server_key]
    needed += [p for k in files.node_keys[:nodes] for p in (k, k.with_suffix(".pub"))]
    missing = [str(p) for p in needed if not p.exists()]
    if len(files.node_keys) < nodes or missing:
        raise FileNotFoundError(
            f"certificate files missing ({', '.join(missing) or f'keys for {nodes} nodes'}); "
            f"run: python -m deploy.certs --out {files.dir} --san localhost --san {LOOPBACK} "
            f"--nodes {nodes}"
        )
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if LOOPBACK not in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}:
        raise ValueError(f"{files.server_cert} lacks the SAN {LOOPBACK}; re-run deploy.certs")


def cert_files(directory: Path, nodes: int) -> CertFiles:
    """The files `deploy.certs` wrote into `directory` (nothing is created)."""
    d = Path(directory).resolve()
    return CertFiles(
        d,
        d / "ca.crt",
        d / "ca.key",
        d / "superlink.crt",
        d / "superlink.key",
        [node_key_path(d, i) for i in range(nodes)],
    )


# --- CLI ---


def _deployment(args: argparse.Namespace) -> LocalDeployment:
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = Path(args.run_dir or STATE / "deploy" / stamp)
    certs = cert_files(Path(args.certs), args.nodes) if args.certs else None
    return LocalDeployment(
        nodes=args.nodes,
        run_dir=run_dir,
        certs=certs,
        insecure=args.insecure,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        echo=not args.quiet,
        isolation=args.isolation,
    )


def _run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.run_config)
    parse_run_config({"num-clients": args.nodes, **overrides})  # fail before any process
    with _deployment(args) as dep:
        outcome = dep.submit(overrides, timeout=args.timeout)
    return report_outcome(outcome, f"\nlogs: {dep.logs}", quiet=args.quiet)


def _up(args: argparse.Namespace) -> int:
    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_term)
    with _deployment(args) as dep:
        print(
            f"\nDeployment up. In another shell:\n"
            f"  export FLWR_HOME={dep.home}\n"
            f"  flwr run {REPO} {CONNECTION} --stream "
            f"--run-config 'num-clients={dep.nodes} results-dir=\"{Path.cwd() / 'results'}\"'\n"
            f"  flwr ls {CONNECTION}; flwr log <run-id> {CONNECTION}\n"
            f"Ctrl-C stops every process.",
            flush=True,
        )
        try:
            while all(p.poll() is None for p in dep.procs.values()):
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
            return 0
        dead = [n for n, p in dep.procs.items() if p.poll() is not None]
        print(f"{', '.join(dead)} exited; stopping the rest (logs: {dep.logs})", file=sys.stderr)
        return 1


def _commands(args: argparse.Namespace) -> int:
    """Print the command lines of a multi-host deployment, from the same builders."""
    n, certs = args.nodes, (args.certs or "").rstrip("/")
    tls = None
    if not args.insecure:
        tls = ServerTls(f"{certs}/ca.crt", f"{certs}/superlink.crt", f"{certs}/superlink.key")
    ca = None if tls is None else tls.ca_cert
    superlink = superlink_args(host="0.0.0.0", port=args.port, tls=tls, database=args.database)
    # The SuperLink and the SuperNodes start their SuperExecs, which read this at start.
    env = [f"{k}={v}" for k, v in superexec_env().items()]
    print(f"# SuperLink host: Fleet, Control and Runtime APIs on port {args.port}")
    print(shlex.join([*env, "flower-superlink", *superlink]))
    if not args.insecure:
        print("# once, from a machine with the flwr CLI and a connection to the SuperLink:")
        for i in range(n):
            pub = f"{certs}/supernode-{i}.pub"
            print(shlex.join(["flwr", "supernode", "register", pub, "<connection>"]))
    for i in range(n):
        node = supernode_args(
            superlink=f"{args.superlink_host}:{args.port}",
            node_config=node_config(i, n, state_dir=args.state_dir),
            port=9094,
            root_certificates=ca,
            auth_key=None if args.insecure else f"{certs}/supernode-{i}.key",
        )
        print(f"# client host {i}")
        print(shlex.join([*env, "flower-supernode", *node]))
    return 0


def _add_common(p: argparse.ArgumentParser, *, certs_help: str) -> None:
    p.add_argument("--nodes", type=int, default=3, help="SuperNodes (default 3)")
    security = p.add_mutually_exclusive_group()
    security.add_argument("--certs", help=certs_help)
    security.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (local development only)",
    )


DESCRIPTION = """\
Try a real Flower deployment on this machine: a SuperLink with TLS, N SuperNodes that
authenticate with their own keys, the app run once on them (run) or left up for your own
`flwr run` (up), a log per process, everything stopped at the end. `commands` prints the
command lines for the same deployment on several hosts."""

EPILOG = """\
examples:
  fedmtl-deploy run --nodes 3 -c num-server-rounds=5   # up, run, summary, down
  fedmtl-deploy up --nodes 3                            # keep it up until Ctrl-C
  fedmtl-deploy commands --certs certs --superlink-host 10.0.0.5 --nodes 3
Run-config keys (-c key=value): fedmtl-run --help; docs/DEPLOYMENT.md for the topology."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmtl-deploy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "start, run the app once, print the summary, stop everything"),
        ("up", "start and keep running until Ctrl-C / SIGTERM"),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_common(
            p,
            certs_help="directory written by `python -m deploy.certs` (default: a fresh CA "
            "in the run dir)",
        )
        p.add_argument("--run-dir", help="logs, FLWR_HOMEs, state (default .state/deploy/<time>)")
        p.add_argument("--state-dir", help="nodes' private state (default <run-dir>/state)")
        p.add_argument(
            "--isolation",
            choices=ISOLATIONS,
            default="subprocess",
            help="Flower's isolation mode (process: one SuperExec per node, started here)",
        )
        p.add_argument("--quiet", action="store_true")
        if name == "run":
            p.add_argument(
                "-c",
                "--run-config",
                action="append",
                default=[],
                help="override a run-config key: -c key=value (repeatable)",
            )
            p.add_argument("--timeout", type=float, default=1800.0, help="seconds for the run")
    p = sub.add_parser("commands", help="print the command lines for a multi-host deployment")
    _add_common(p, certs_help="the certificate directory as seen on the hosts")
    p.add_argument("--superlink-host", required=True, help="name or IP the SuperNodes dial")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--database", default="/var/lib/fedmtl/superlink.db")
    p.add_argument("--state-dir", default="/var/lib/fedmtl/state", help="on the client hosts")
    args = parser.parse_args(argv)
    if args.command == "commands":
        if not args.insecure and not args.certs:
            parser.error("commands: give --certs DIR (or --insecure)")
        return _commands(args)
    try:
        return _run(args) if args.command == "run" else _up(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
