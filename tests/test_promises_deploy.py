"""Transport promises that tests/test_deploy.py does not pin: a local deployment asked for
neither certificates nor `--insecure` starts its SuperLink with TLS and SuperNode
authentication (a fresh CA), the Runtime API between a ClientApp and its SuperNode stays on
loopback, the simulation SuperLink (insecure) accepts connections from this host only, and a
SuperNode that brings no key cannot join a deployment that authenticates nodes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy.certs import generate
from deploy.local import LocalDeployment
from deploy.local import main as local_main
from tests.helpers import engine


class Spawned(Exception):
    """Stops the deployment at its first process, before anything runs."""


def test_a_deployment_asked_for_nothing_uses_tls_and_node_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[tuple[str, list[str]]] = []

    def spawn(self: LocalDeployment, name: str, exe: str, args: list[str]) -> None:
        spawned.append((exe, args))
        raise Spawned

    monkeypatch.setattr(LocalDeployment, "_spawn", spawn)
    dep = LocalDeployment(nodes=2, run_dir=tmp_path, echo=False)
    with pytest.raises(Spawned), dep:
        pass
    assert [exe for exe, _ in spawned] == ["flower-superlink"]
    args = spawned[0][1]
    assert "--insecure" not in args and "--enable-supernode-auth" in args
    certs = tmp_path / "certs"
    assert args[args.index("--ssl-certfile") + 1] == str(certs / "superlink.crt")
    assert sorted(p.name for p in certs.glob("supernode-*.key")) == [
        "supernode-0.key",
        "supernode-1.key",
    ]
    # The CLI connection the deployment writes verifies the SuperLink through that CA.
    connection = (tmp_path / "flwr-home" / "config.toml").read_text()
    assert "insecure" not in connection and str(certs / "ca.crt") in connection


def test_the_runtime_api_of_every_supernode_listens_on_loopback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_main(["commands", "--superlink-host", "fl.example.org", "--certs", "/c", "--nodes", "2"])
    lines = capsys.readouterr().out.splitlines()
    # Each command may start with its environment (VAR=value flower-supernode ...).
    nodes = [ln.split() for ln in lines if "flower-supernode" in ln.split()]
    assert len(nodes) == 2
    for args in nodes:
        assert args[args.index("--host") + 1] == "127.0.0.1", args
        assert args[args.index("--port") + 1] == "9094"


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def listening_hosts(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) with a socket listening on `port`."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, state = line.split()[1:4]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(host)
    return hosts


@pytest.mark.slow
def test_the_simulation_superlink_listens_on_loopback_only() -> None:
    config = (engine().home / "config.toml").read_text()
    address = next(ln for ln in config.splitlines() if ln.startswith("address"))
    port = int(address.split(":")[-1].strip('" '))
    hosts = listening_hosts(port)
    assert hosts, f"nothing listens on port {port}"
    assert hosts <= LOOPBACK, f"the simulation SuperLink listens on {hosts}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_supernode_without_a_registered_key_cannot_join(tmp_path: Path) -> None:
    """An outsider needs no key at all: a SuperNode started without one registers itself
    through the Fleet API, which only SuperNode authentication on the SuperLink refuses.
    (tests/test_deploy.py's stranger presents a key; it is refused either way.)"""
    certs = generate(tmp_path / "certs", ["localhost", "127.0.0.1"], 1)
    with LocalDeployment(nodes=1, run_dir=tmp_path / "run", certs=certs, echo=False) as dep:
        outsider = dep.start_supernode(1, key=None, num_partitions=2)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and outsider.poll() is None:
            assert dep.online_nodes() == 1, "a SuperNode without a registered key joined"
            time.sleep(2)
        assert dep.online_nodes() == 1, "a SuperNode without a registered key joined"
        log = (dep.logs / "supernode-1.log").read_text()
        assert outsider.poll() is not None, f"the outsider was not refused:\n{log[-2000:]}"
        assert outsider.returncode != 0, log[-2000:]
        refusals = [
            line
            for line in (dep.logs / "superlink.log").read_text().splitlines()
            if "/v1/fleet/register-node" in line and "ApiError" in line
        ]
        assert refusals, "the SuperLink logged no refused self-registration"
