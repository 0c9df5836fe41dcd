"""Deployment: certificates, a real TLS + node-authenticated deployment on loopback (SuperLink,
3 SuperNodes, `flwr run`), the refusal of an unregistered node, and the compose files
(validated by dclint against the Compose Specification, flags compared with deploy.local)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from flwr.common.config import parse_config_args

from common.records import EVALUATION_TASKS, TIMING
from deploy.certs import CertFiles, generate
from deploy.certs import main as certs_main
from deploy.flower_args import (
    TASK_POLL_ENV,
    ServerTls,
    node_config,
    superexec_args,
    superexec_env,
    superlink_args,
    supernode_args,
)
from deploy.local import LocalDeployment, cert_files
from deploy.local import main as local_main
from deploy.processes import descendants, flower_env, still_running

REPO = Path(__file__).resolve().parent.parent
DCLINT_VERSION = "3.1.0"  # pinned in package.json / package-lock.json
TINY: dict[str, Any] = {
    "num-server-rounds": 2,
    "samples-per-client": 120,
    "local-epochs": 1,
    "hidden": 32,
}


# --- certificates ---


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    # 4 key pairs: the deployment registers 3, the fourth plays the stranger.
    return generate(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1", "superlink"], 4)


def test_server_certificate_verifies_against_the_ca_for_every_san(certs: CertFiles) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "superlink"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # What a TLS client does: chain to the CA, name in the SANs, server-auth usage.
    for name in (
        x509.DNSName("localhost"),
        x509.DNSName("superlink"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
        chain = verifier.verify(cert, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca])).build_server_verifier(
            x509.DNSName("elsewhere.example")
        ).verify(cert, [])


def test_node_keys_are_p384_openssh_and_private_files_are_0600(certs: CertFiles) -> None:
    assert len(certs.node_keys) == 4
    for key_path, pub_path in zip(certs.node_keys, certs.node_public_keys, strict=True):
        assert key_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        key = load_ssh_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp384r1"
        assert pub_path.read_text().startswith("ecdsa-sha2-nistp384 ")
        assert load_ssh_public_key(pub_path.read_bytes()) == key.public_key()
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for private in (certs.ca_key, certs.server_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    listing = (certs.dir / "supernodes.txt").read_text().splitlines()
    assert listing == [p.read_text().strip() for p in certs.node_public_keys]
    assert not list(certs.dir.glob(".*"))  # no temp file left by the atomic writes


def test_certs_rerun_keeps_ca_and_node_keys_force_replaces(tmp_path: Path) -> None:
    assert certs_main(["--out", str(tmp_path), "--san", "localhost", "--nodes", "1"]) == 0
    ca, node = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "supernode-0.key").read_bytes()
    files = generate(tmp_path, ["localhost", "10.0.0.5"], 2)  # add a SAN and a node
    assert files.ca_cert.read_bytes() == ca and files.node_keys[0].read_bytes() == node
    assert files.node_keys[1].exists()
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    generate(tmp_path, ["localhost"], 2, force=True)
    assert (tmp_path / "ca.crt").read_bytes() != ca
    assert (tmp_path / "supernode-0.key").read_bytes() != node
    assert certs_main(["--out", str(tmp_path), "--nodes", "1"]) == 2  # no SAN: refused


# --- command lines ---


def test_node_config_reads_back_through_flowers_parser() -> None:
    text = node_config(
        1, 3, state_dir="/var/lib/fed mtl/state", client_id=7, data_file="/data/site b.csv"
    )
    assert parse_config_args([text]) == {
        "partition-id": 1,
        "num-partitions": 3,
        "client-id": 7,
        "state-dir": "/var/lib/fed mtl/state",
        "data-file": "/data/site b.csv",
    }
    with pytest.raises(ValueError):
        node_config(3, 3)
    with pytest.raises(ValueError):
        node_config(0, 1, state_dir='/a"b')


def test_every_flag_built_exists_in_the_installed_flower() -> None:
    tls = ServerTls("ca", "crt", "key")
    built = {
        "flower-superlink": superlink_args(host="h", port=1, tls=tls, database="db")
        + superlink_args(host="h", port=1, tls=None, isolation="process"),
        "flower-supernode": supernode_args(
            superlink="h:1", node_config="", port=1, root_certificates="ca", auth_key="k"
        )
        + supernode_args(
            superlink="h:1", node_config="", port=1, root_certificates=None, auth_key=None
        ),
        "flower-superexec": superexec_args(runtime_api="h:1", root_certificates="ca")
        + superexec_args(runtime_api="h:1", root_certificates=None),
    }
    for exe, args in built.items():
        help_text = subprocess.run(
            [exe, "--help"], capture_output=True, text=True, timeout=60, env=flower_env()
        ).stdout
        options = _help_options(help_text)
        flags = {a for a in args if a.startswith("--")}
        missing = sorted(flags - set(options))
        assert not missing, f"{exe} ({version('flwr')}) has no {missing}"
        deprecated = sorted(f for f in flags if "deprecated" in options[f].lower())
        assert not deprecated, f"{exe}: {deprecated} are deprecated"


def _help_options(help_text: str) -> dict[str, str]:
    """'--flag' -> its help paragraph, from argparse's `--help` output."""
    options: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"^  (?:-\w+, )?(--[\w-]+)", line)
        if match:
            current = match.group(1)
            options[current] = line
        elif current and line.startswith("   "):
            options[current] += " " + line.strip()
        else:
            current = None
    return options


def test_tls_is_the_default_and_insecure_must_be_explicit(tmp_path: Path) -> None:
    assert "--insecure" in superlink_args(host="127.0.0.1", port=1, tls=None)
    tls = superlink_args(host="127.0.0.1", port=1, tls=ServerTls("ca", "crt", "key"))
    assert "--insecure" not in tls and "--enable-supernode-auth" in tls
    with pytest.raises(ValueError, match="needs TLS"):
        supernode_args(
            superlink="x:1", node_config="", port=1, root_certificates=None, auth_key="k"
        )
    # Certificates asked for but absent: refused before any process starts, no fallback.
    dep = LocalDeployment(nodes=1, run_dir=tmp_path / "run", certs=cert_files(tmp_path, 1))
    with pytest.raises(FileNotFoundError, match=r"deploy\.certs"), dep:
        pass
    assert dep.procs == {}
    # A certificate that is not valid for the address the nodes dial: refused as well.
    no_loopback = generate(tmp_path / "lan", ["fl.example.org"], 1)
    dep = LocalDeployment(nodes=1, run_dir=tmp_path / "run2", certs=no_loopback)
    with pytest.raises(ValueError, match=r"SAN 127\.0\.0\.1"), dep:
        pass
    assert dep.procs == {}
    with pytest.raises(SystemExit):
        local_main(["run", "--insecure", "--certs", str(tmp_path)])


# --- a real deployment on loopback ---


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles):
    """SuperLink (TLS, node auth) + 3 registered SuperNodes; afterwards, prove that no
    process it started (or that they started) is left."""
    run_dir = tmp_path_factory.mktemp("deploy")
    dep = LocalDeployment(nodes=3, run_dir=run_dir, certs=certs, echo=False)
    seen: dict[int, str] = {}
    try:
        with dep:
            yield dep
            for proc in dep.procs.values():
                seen |= descendants(proc.pid)
    finally:
        leaders = [p for p in dep.procs.values() if p.poll() is None]
        left = still_running(seen)
        strays = _processes_mentioning(str(run_dir), f"127.0.0.1:{dep.port}")
        assert not leaders and not left and not strays, (leaders, left, strays)


def _processes_mentioning(*needles: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if any(n in line for n in needles) and str(os.getpid()) != line.split()[0]
    ]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_tls_deployment_with_node_auth_runs_rounds(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    run = {**TINY, "results-dir": str(tmp_path), "audit-received": True}
    outcome = deployment.submit(run, timeout=420)  # a few seconds per round on a quiet machine
    tail = outcome.log_path.read_text()[-3000:] if outcome.log_path.exists() else ""
    assert outcome.ok, f"{outcome.status}/{outcome.flower_status}:\n{tail}"
    summary = outcome.summary
    assert summary is not None and summary["status"] == "completed"
    assert summary["rounds"] >= 2
    assert len(summary["per_client"]) == 3, summary["per_client"].keys()
    rows = [json.loads(line) for line in (outcome.results_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["clients"] == 3 for r in rows)
    # Each SuperNode trained its own partition and kept its state, and its prepared data
    # (one cache entry, read by the later messages' processes), in its own state dir.
    for i in range(3):
        assert list((deployment.state_dir / f"supernode-{i}").rglob("state.npz"))
        cached = (deployment.state_dir / f"supernode-{i}" / "data-cache").glob("*/manifest.json")
        assert len(list(cached)) == 1
    audit = [json.loads(x) for x in (outcome.results_dir / "received.jsonl").open()]
    # One message wave per round: round 1's evaluation came with round 2's training.
    waves = sorted({(e["round"], e["phase"]) for e in audit})
    assert waves == [(1, "train"), (2, "evaluate"), (2, "train")], waves
    carried = [EVALUATION_TASKS in e["config"] for e in audit if e["phase"] == "train"]
    assert carried == [False] * 3 + [True] * 3
    # Every message's timeline, in order: created at the server, a process started for it,
    # handler entered, session ready, reply built, pulled by the ServerApp.
    for e in audit:
        t = e["config"][TIMING]
        steps = [t["sent"], t["process-start"], t["handler"], t["ready"], t["reply"], e["pulled"]]
        assert steps[0] - 0.05 <= steps[1] and steps[1:] == sorted(steps[1:]), e
    print("seconds per round (TLS deployment, 3 SuperNodes):", [r["seconds"] for r in rows])


@pytest.mark.slow
def test_flowers_superexecs_get_the_task_poll_interval(deployment: LocalDeployment) -> None:
    """In subprocess isolation the SuperLink and every SuperNode start their SuperExec: it
    inherits the environment that sets its task poll."""
    expected = f"{TASK_POLL_ENV}={superexec_env()[TASK_POLL_ENV]}".encode()
    superexecs = []
    for proc in deployment.procs.values():
        for pid in descendants(proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue  # a ClientApp process that just ended
            if b"flower-superexec" in cmdline:
                superexecs.append(expected in environ)
    assert superexecs == [True] * 4  # the ServerApp's and one per SuperNode


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unregistered_supernode_is_refused(deployment: LocalDeployment, certs: CertFiles) -> None:
    proc = deployment.start_supernode(3, key=certs.node_keys[3], num_partitions=4)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a SuperNode with an unregistered key was not refused within 60 s")
    log = (deployment.logs / "supernode-3.log").read_text()
    # flower-supernode reports Flower's exit code 305 in its log; the process exits 1.
    assert code != 0 and "Exit Code: 305" in log, log[-2000:]
    assert "Failed to activate SuperNode" in log
    server_log = (deployment.logs / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in server_log
    assert deployment.online_nodes() == 3


# --- compose files ---


COMPOSE = REPO / "docker-compose.yml"
COMPOSE_TLS = REPO / "docker-compose.tls.yml"


def _dclint() -> Path:
    """node_modules/.bin/dclint, installed from package-lock.json when missing."""
    binary = REPO / "node_modules" / ".bin" / "dclint"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is missing: install Node.js >= 20 with npm; the compose files are validated "
            f"with dclint {DCLINT_VERSION} (npm ci, from package-lock.json)"
        )
    lock = REPO / ".state" / "npm-install.lock"
    lock.parent.mkdir(exist_ok=True)
    with open(lock, "w") as f:  # two test runs must not run npm ci at once
        fcntl.flock(f, fcntl.LOCK_EX)
        if not binary.exists():
            out = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"
    return binary


def _lint(*files: Path) -> tuple[int, list[dict]]:
    out = subprocess.run(
        [str(_dclint()), "--formatter", "json", "--max-warnings", "0", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"dclint gave no JSON report:\n{out.stdout}\n{out.stderr}")
    return out.returncode, [m for f in report for m in f["messages"]]


def test_dclint_version_is_the_pinned_one() -> None:
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/dclint"]["version"] == DCLINT_VERSION
    out = subprocess.run([str(_dclint()), "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == DCLINT_VERSION


def test_compose_files_validate_against_the_compose_specification(tmp_path: Path) -> None:
    code, messages = _lint(COMPOSE, COMPOSE_TLS)
    assert code == 0 and messages == [], messages
    # The validator is real: a misspelt key is a schema error.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("dockerfile_inline:", "dockerfile_inlined:"))
    code, messages = _lint(broken)
    assert code != 0 and any(m["rule"] == "invalid-schema" for m in messages)


def _services(*files: Path) -> dict[str, dict]:
    """Services after Compose's merge of the files: `command` and `secrets` of a later file
    replace the earlier ones (the only keys the TLS overlay sets)."""
    merged: dict[str, dict] = {}
    for path in files:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            merged.setdefault(name, {}).update(service)
    return merged


def _secret_paths(service: dict) -> set[str]:
    return {f"/run/secrets/{s['target']}" for s in service.get("secrets", [])}


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_compose_commands_are_the_ones_deploy_local_builds(tls: bool) -> None:
    services = _services(COMPOSE, COMPOSE_TLS) if tls else _services(COMPOSE)
    ca = "/run/secrets/ca.crt" if tls else None
    nodes = sorted(n for n in services if n.startswith("supernode-"))
    assert nodes == ["supernode-0", "supernode-1", "supernode-2"]
    expected = {
        "superlink": superlink_args(
            host="0.0.0.0",
            port=8000,
            tls=ServerTls(ca, "/run/secrets/superlink.crt", "/run/secrets/superlink.key")
            if ca
            else None,
            database="/app/state.db",
            isolation="process",
        ),
        "serverapp": superexec_args(runtime_api="superlink:8000", root_certificates=ca),
    }
    for i, name in enumerate(nodes):
        expected[name] = supernode_args(
            superlink="superlink:8000",
            node_config=node_config(i, len(nodes), state_dir="/app/state"),
            port=9094,
            root_certificates=ca,
            auth_key="/run/secrets/supernode.key" if tls else None,
            host="0.0.0.0",
            isolation="process",
        )
        # The ClientApp SuperExec dials its own SuperNode inside the compose network: no TLS.
        expected[f"clientapp-{i}"] = superexec_args(
            runtime_api=f"{name}:9094", root_certificates=None
        )
    assert set(services) == set(expected)
    for name, args in expected.items():
        assert services[name]["command"] == args, name
        # Every SuperExec looks for work as often as deploy.local's do.
        if name == "serverapp" or name.startswith("clientapp-"):
            assert services[name]["environment"] == superexec_env(), name
        # Every file a flag names is mounted there.
        named = {a for a in args if a.startswith("/run/secrets/")}
        assert named <= _secret_paths(services[name]), name


def test_compose_images_ports_and_volumes() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    services = raw["services"]
    flwr = version("flwr")
    assert services["superlink"]["image"] == f"flwr/superlink:{flwr}"
    for name, service in services.items():
        if name.startswith("supernode-"):
            assert service["image"] == f"flwr/supernode:{flwr}"
        if name.startswith(("clientapp-", "serverapp")):
            assert f"FROM flwr/superexec:{flwr}" in service["build"]["dockerfile_inline"]
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # Each ClientApp SuperExec has a data and a state volume of its own.
    volumes = [v for n, s in services.items() if n.startswith("clientapp-") for v in s["volumes"]]
    sources = [v.split(":")[0] for v in volumes]
    assert len(sources) == len(set(sources)) == 6
    assert {v.split(":")[1] for v in volumes} == {"/app/data", "/app/state"}
    dockerfile = services["serverapp"]["build"]["dockerfile_inline"]
    assert "pip install --no-cache-dir torch==2.13.0" in dockerfile
    assert "--index-url" not in dockerfile
    # The TLS overlay's secrets are the files deploy.certs writes.
    secrets = yaml.safe_load(COMPOSE_TLS.read_text())["secrets"]
    files = {Path(s["file"].split("}", 1)[-1]).name for s in secrets.values()}
    assert files == {
        "ca.crt",
        "superlink.crt",
        "superlink.key",
        *(f"supernode-{i}.key" for i in range(3)),
    }


def test_commands_prints_the_builders_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert local_main(["commands", "--superlink-host", "fl.example.org", "--certs", "/c"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 1 + 3 + 3  # superlink, 3 registrations, 3 supernodes
    assert "--enable-supernode-auth" in lines[0]
    assert "fl.example.org:8000" in lines[-1] and "/c/supernode-2.key" in lines[-1]
    with pytest.raises(SystemExit):
        local_main(["commands", "--superlink-host", "h"])  # neither --certs nor --insecure
