"""Certificates and keys for a TLS + node-authenticated deployment.

Writes, into one directory:

- `ca.crt`, `ca.key`: a private CA (EC P-384). Every SuperNode and every `flwr` CLI trusts
  the SuperLink through `ca.crt` (`--root-certificates`, connection `root-certificates`).
- `superlink.crt`, `superlink.key`: the SuperLink's server certificate, signed by the CA,
  valid for the DNS names and IP addresses given with `--san` (the names nodes dial).
- `supernode-<i>.key`, `supernode-<i>.pub`: one EC P-384 key pair per SuperNode in OpenSSH
  format (what `flower-supernode --auth-supernode-private-key` reads and what
  `flwr supernode register` takes), plus `supernodes.txt` listing the public keys.

Re-running is safe: an existing CA and existing node keys are kept (replacing them would
lock out every deployed node), the server certificate is re-issued from the CA (so adding a
SAN or a node is "run the same command again"), `--force` replaces everything. Private keys
are written 0600, atomically (a reader never sees half a key).

    python -m deploy.certs --out certs --san localhost --san 127.0.0.1 --nodes 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.storage import atomic_write_bytes

CURVE = ec.SECP384R1  # P-384: what Flower's node authentication requires for node keys
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class CertFiles:
    """Where `generate` put everything (absolute paths)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # private keys; the public key is `<key>.with_suffix(".pub")`

    @property
    def node_public_keys(self) -> list[Path]:
        return [k.with_suffix(".pub") for k in self.node_keys]


def node_key_path(out: Path, index: int) -> Path:
    return out / f"supernode-{index}.key"


def generate(
    out: str | Path,
    sans: list[str],
    nodes: int,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> CertFiles:
    """Create (or complete) the certificate directory `out`; see the module docstring."""
    if not sans:
        raise ValueError("at least one --san is needed: the name or IP the nodes dial")
    if nodes < 0:
        raise ValueError("--nodes must be >= 0")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = CertFiles(
        dir=out,
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "superlink.crt",
        server_key=out / "superlink.key",
        node_keys=[node_key_path(out, i) for i in range(nodes)],
    )

    if force or not (files.ca_cert.exists() and files.ca_key.exists()):
        ca_key = ec.generate_private_key(CURVE())
        ca_cert = _ca_certificate(ca_key, days)
        _write_private(files.ca_key, _pem_private(ca_key))
        _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.ca_key} is not an EC key; use --force to start over")

    server_key = ec.generate_private_key(CURVE())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, sans, days)
    _write_private(files.server_key, _pem_private(server_key))
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))

    for key_path in files.node_keys:
        if force or not key_path.exists():
            key = ec.generate_private_key(CURVE())
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                ),
            )
        else:
            key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_public(key_path.with_suffix(".pub"), public + f" {key_path.stem}\n".encode())

    listing = "".join(p.read_text() for p in files.node_public_keys)
    _write_public(out / "supernodes.txt", listing.encode())
    return files


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmtl"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    # Back-date a little: hosts with slightly skewed clocks still accept a fresh certificate.
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=days)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    name = _name("fedmtl deployment CA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return _validity(builder, days).sign(key, hashes.SHA384())


def parse_sans(sans: list[str]) -> list[x509.GeneralName]:
    """'127.0.0.1' / '::1' -> IPAddress, anything else -> DNSName (TLS checks them apart)."""
    names: list[x509.GeneralName] = []
    for san in dict.fromkeys(s.strip() for s in sans if s.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: list[str],
    days: int,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(parse_sans(sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    return _validity(builder, days).sign(ca_key, hashes.SHA384())


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    # atomic_write_bytes writes through mkstemp, which creates the file 0600 before any
    # byte of the key is in it; chmod again so the guarantee does not rest on that detail.
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


DESCRIPTION = """\
Create the certificates and keys a secured deployment needs, in one directory: a private CA,
the SuperLink's TLS certificate for the names nodes dial (--san), and one key pair per
SuperNode for node authentication. Re-running keeps the CA and node keys (deployed nodes
keep working) and re-issues the server certificate; --force replaces everything."""

EPILOG = """\
example:
  fedmtl-certs --out certs --san localhost --san 127.0.0.1 --nodes 3
then: fedmtl-deploy run --certs certs --nodes 3, or docs/DEPLOYMENT.md for several hosts."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmtl-certs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        help="DNS name or IP address the SuperLink is reached at (repeatable)",
    )
    parser.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to create")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="certificate validity")
    parser.add_argument("--force", action="store_true", help="replace the CA and all keys")
    args = parser.parse_args(argv)
    try:
        files = generate(args.out, args.san, args.nodes, days=args.days, force=args.force)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"CA:        {files.ca_cert}")
    print(f"SuperLink: {files.server_cert} (SANs: {', '.join(args.san)})")
    for key in files.node_keys:
        print(f"SuperNode: {key} (+ {key.with_suffix('.pub').name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
