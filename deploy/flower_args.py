"""The flags and environment of Flower's processes in a deployment: the one place that knows
them. `deploy.local` starts its SuperLink, SuperNodes and SuperExecs with these, and
docker-compose.yml uses the same (tests/test_deploy.py fails when the two drift apart)."""

from __future__ import annotations

from dataclasses import dataclass

from deploy.certs import CertFiles
from deploy.processes import LOOPBACK

TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # read by flower-superexec at start
TASK_POLL_S = 0.1  # seconds between a SuperExec's looks for work (Flower's default: 1 s)


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's TLS files, as paths where the SuperLink runs (host or container)."""

    ca_cert: str
    certfile: str
    keyfile: str

    @classmethod
    def from_files(cls, files: CertFiles) -> ServerTls:
        return cls(str(files.ca_cert), str(files.server_cert), str(files.server_key))


def superlink_args(
    *,
    host: str,
    port: int,
    tls: ServerTls | None,
    database: str | None = None,
    isolation: str = "subprocess",
) -> list[str]:
    """Flags of `flower-superlink`. TLS always comes with SuperNode authentication: a
    deployment that encrypts but accepts any node is not one we ship."""
    args = (
        ["--insecure"]
        if tls is None
        else [
            "--ssl-ca-certfile",
            tls.ca_cert,
            "--ssl-certfile",
            tls.certfile,
            "--ssl-keyfile",
            tls.keyfile,
            "--enable-supernode-auth",
        ]
    )
    args += ["--isolation", isolation, "--host", host, "--port", str(port)]
    if database:
        args += ["--database", database]
    # The app's dependencies are installed beforehand (venv, image): never `uv sync` per run.
    return [*args, "--disable-runtime-dependency-installation"]


def supernode_args(
    *,
    superlink: str,
    node_config: str,
    port: int,
    root_certificates: str | None,
    auth_key: str | None,
    host: str = LOOPBACK,
    isolation: str = "subprocess",
) -> list[str]:
    """Flags of `flower-supernode`. `port` is its own Runtime API (ClientApp I/O): several
    nodes on one host need different ones; in process isolation the ClientApp SuperExec
    dials it, so it binds `host` 0.0.0.0 inside a container."""
    if auth_key and not root_certificates:
        raise ValueError("SuperNode authentication needs TLS: give root_certificates too")
    args = _client_tls(root_certificates)
    if auth_key:
        args += ["--auth-supernode-private-key", auth_key]
    return [
        *args,
        "--superlink",
        superlink,
        "--isolation",
        isolation,
        "--host",
        host,
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


def superexec_args(*, runtime_api: str, root_certificates: str | None) -> list[str]:
    """Flags of `flower-superexec` in process isolation (one per SuperNode for ClientApps,
    one per SuperLink for ServerApps); in subprocess isolation Flower starts it itself."""
    return [*_client_tls(root_certificates), "--runtime-api-address", runtime_api]


def superexec_env(task_poll_interval: float | None = TASK_POLL_S) -> dict[str, str]:
    """Environment of every SuperExec (and of the SuperLink and SuperNodes, which start
    theirs in subprocess isolation); None keeps Flower's default."""
    return {} if task_poll_interval is None else {TASK_POLL_ENV: f"{task_poll_interval:g}"}


def _client_tls(ca_cert: str | None) -> list[str]:
    return ["--insecure"] if ca_cert is None else ["--root-certificates", ca_cert]


def node_config(
    partition_id: int,
    num_partitions: int,
    *,
    state_dir: str | None = None,
    client_id: int | None = None,
    data_file: str | None = None,
    schema_file: str | None = None,
    tasks: str | None = None,
) -> str:
    """The `--node-config` string the ClientApp reads (client/app.py): partition-id,
    num-partitions, and optionally client-id, state-dir, the node's own task set ('a,b'),
    and a node's own data-file / schema-file (dataset `user`; they take precedence over the
    run config's)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    parts = [f"partition-id={partition_id}", f"num-partitions={num_partitions}"]
    if client_id is not None:
        parts.append(f"client-id={client_id}")
    for key, path in (
        ("state-dir", state_dir),
        ("data-file", data_file),
        ("schema-file", schema_file),
        ("tasks", tasks),
    ):
        if path:
            # Flower splits the string on spaces outside double quotes and reads each value
            # as TOML: a quote or an escape inside the path cannot be expressed.
            if '"' in path or "'" in path or "\\" in path:
                raise ValueError(f"{key} {path!r}: quotes and backslashes are not supported")
            parts.append(f'{key}="{path}"')
    return " ".join(parts)
