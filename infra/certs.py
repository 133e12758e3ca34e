"""The stack's key material, made once at the first `up` (docs/design.md §3.1).

Two separate authorities, as the design demands: the PTA CA signs agent client
certificates and nothing else; the service TLS CA issues the STS and CA servers' HTTPS
certificates and the broker's AMQPS certificate (its certificate is `ca_bundle` in
stack.json; agents pin it at registration). Private keys are written with
mode 0600 by `common.pki.write_private_key`. Also the STS's first ES256 signing key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from common import pki

CA_LIFETIME_DAYS = 3650
SERVER_CERT_LIFETIME_DAYS = 825


@dataclass(frozen=True, slots=True)
class StackPki:
    """Paths of every certificate and key of a stack."""

    dir: Path

    @property
    def pta_ca_cert(self) -> Path:
        return self.dir / "pta-ca.pem"

    @property
    def pta_ca_key(self) -> Path:
        return self.dir / "pta-ca.key"

    @property
    def service_ca_cert(self) -> Path:
        """The `ca_bundle` of stack.json: what clients verify the STS and CA with."""
        return self.dir / "service-ca.pem"

    @property
    def service_ca_key(self) -> Path:
        return self.dir / "service-ca.key"

    def server_cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def server_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def signing_key_dir(self) -> Path:
        return self.dir / "sts-signing"


SERVERS = ("sts", "ca", "rabbitmq")  # rabbitmq: its AMQPS listener


def ensure(
    pki_dir: Path,
    *,
    ips: list[str] | None = None,
    now: dt.datetime | None = None,
    crl_url: str | None = None,
) -> StackPki:
    """Create whatever is missing (idempotent): both CAs, server certs, a signing key.

    ``crl_url`` is the CA's plain-HTTP CRL base URL: server certificates name
    ``{crl_url}/service.crl`` as their CRL distribution point (agents check it).
    """
    now = now or dt.datetime.now(dt.UTC)
    paths = StackPki(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    for cert_path, key_path, name in (
        (paths.pta_ca_cert, paths.pta_ca_key, "PTA Agent CA"),
        (paths.service_ca_cert, paths.service_ca_key, "PTA Service TLS CA"),
    ):
        if not cert_path.exists():
            cert, key = pki.make_ca(name, now=now, lifetime_days=CA_LIFETIME_DAYS)
            pki.write_private_key(key_path, key, overwrite=True)
            cert_path.write_bytes(pki.certificate_pem(cert))
    service_ca = pki.load_certificate_pem(paths.service_ca_cert.read_bytes())
    service_key = pki.read_private_key(paths.service_ca_key)
    for name in SERVERS:
        if paths.server_cert(name).exists():
            continue
        cert, key = pki.issue_server_cert(
            service_ca,
            service_key,
            hostnames=["localhost"],
            ips=ips or ["127.0.0.1"],
            now=now,
            lifetime_days=SERVER_CERT_LIFETIME_DAYS,
            crl_url=f"{crl_url}/service.crl" if crl_url else None,
        )
        pki.write_private_key(paths.server_key(name), key, overwrite=True)
        paths.server_cert(name).write_bytes(pki.certificate_pem(cert))
    signing = paths.signing_key_dir
    signing.mkdir(exist_ok=True)
    signing.chmod(0o700)
    if not any(signing.glob("*.pem")):
        key = pki.new_ec_key()
        pki.write_private_key(signing / f"{now:%Y%m%dT%H%M%S}.pem", key)
    return paths
