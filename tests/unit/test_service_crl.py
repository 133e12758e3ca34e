"""The service CRL on the agent, pure parts (agent.service_crl, agent.state.usable_crl)
and the CRL distribution point of issued certificates (common.pki)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from agent import service_crl, state
from common import pki

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def service_ca() -> tuple[x509.Certificate, pki.PrivateKey]:
    return pki.make_ca("service TLS CA", now=NOW, lifetime_days=30)


def _crl(
    ca: tuple[x509.Certificate, pki.PrivateKey], number: int, *, hours: int = 1
) -> x509.CertificateRevocationList:
    return pki.build_crl(*ca, [], now=NOW, next_update_hours=hours, crl_number=number)


def test_a_newer_crl_replaces_the_stored_one_and_an_older_one_does_not(
    service_ca: tuple[x509.Certificate, pki.PrivateKey], tmp_path: Path
) -> None:
    target = tmp_path / "service-crl.pem"
    assert service_crl._store(target, _crl(service_ca, 5))
    assert not service_crl._store(target, _crl(service_ca, 4))  # a replayed old CRL
    assert not service_crl._store(target, _crl(service_ca, 5))
    assert service_crl._store(target, _crl(service_ca, 6))
    stored = x509.load_pem_x509_crl(target.read_bytes())
    assert service_crl._number(stored) == 6


def test_a_crl_past_its_next_update_is_not_used(
    service_ca: tuple[x509.Certificate, pki.PrivateKey], tmp_path: Path
) -> None:
    target = tmp_path / "service-crl.pem"
    assert state.usable_crl(target, NOW) is None  # none yet
    service_crl._store(target, _crl(service_ca, 1, hours=1))
    assert state.usable_crl(target, NOW) == target
    assert state.usable_crl(target, NOW + dt.timedelta(hours=2)) is None
    target.write_text("not a CRL")
    assert state.usable_crl(target, NOW) is None


def test_server_certificates_name_the_service_crl(
    service_ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    cert, _ = pki.issue_server_cert(
        *service_ca, hostnames=["localhost"], ips=[], now=NOW, lifetime_days=1,
        crl_url="http://127.0.0.1:8080/service.crl",
    )  # fmt: skip
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [str(n.value) for p in points for n in p.full_name or []] == [
        "http://127.0.0.1:8080/service.crl"
    ]
    with pytest.raises(ValueError, match="HTTP URL"):
        pki.issue_server_cert(
            *service_ca, hostnames=["localhost"], ips=[], now=NOW, lifetime_days=1,
            crl_url="ldap://x/service.crl",
        )  # fmt: skip
