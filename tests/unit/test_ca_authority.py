"""The CA key material: loading checks at start, issuing, serial and kid forms."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from ca.authority import Authority, load_authority, serial_hex, serial_int
from ca.errors import ConfigurationError
from common import pki

NOW = dt.datetime.now(dt.UTC)


def _write_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = pki.make_ca(name, now=NOW, lifetime_days=365)
    cert_file = folder / f"{name}.pem"
    cert_file.write_bytes(pki.certificate_pem(cert))
    key_file = folder / f"{name}.key"
    pki.write_private_key(key_file, key)
    return cert_file, key_file


def _load(pta: tuple[Path, Path], service: tuple[Path, Path]) -> Authority:
    return load_authority(
        pta_cert_file=pta[0],
        pta_key_file=pta[1],
        service_cert_file=service[0],
        service_key_file=service[1],
    )


def test_issued_certificate_carries_what_the_ca_stores(tmp_path: Path) -> None:
    authority = _load(_write_ca(tmp_path, "pta"), _write_ca(tmp_path, "service"))
    key = pki.new_rsa_key()
    tenant, agent = str(uuid.uuid4()), str(uuid.uuid4())
    issued = authority.issue_agent_certificate(
        pki.new_agent_csr(key), tenant_id=tenant, agent_id=agent, now=NOW, lifetime_days=180
    )
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    assert issued.serial == format(cert.serial_number, "x")
    assert issued.kid == pki.spki_sha256_kid(key.public_key())
    assert issued.spki == pki.spki_der(key.public_key())
    assert issued.not_after == NOW + dt.timedelta(days=180) - dt.timedelta(
        microseconds=NOW.microsecond
    )
    identity = pki.agent_identity(cert)
    assert (identity.tenant_id, identity.agent_id) == (tenant, agent)
    pki.verify_issued_by(cert, authority.pta_cert, now=NOW)


def test_a_key_of_another_ca_is_refused_naming_the_setting(tmp_path: Path) -> None:
    pta_cert, _ = _write_ca(tmp_path, "pta")
    _, other_key = _write_ca(tmp_path, "other")
    with pytest.raises(ConfigurationError) as caught:
        _load((pta_cert, other_key), _write_ca(tmp_path, "service"))
    assert "PTA_CA_PTA_CA_KEY_FILE" in caught.value.message


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    pta = _write_ca(tmp_path, "pta")
    os.chmod(pta[1], 0o644)
    with pytest.raises(ConfigurationError) as caught:
        _load(pta, _write_ca(tmp_path, "service"))
    assert "0600" in caught.value.message or "mode" in caught.value.message


def test_a_missing_certificate_is_refused(tmp_path: Path) -> None:
    service = _write_ca(tmp_path, "service")
    with pytest.raises(ConfigurationError) as caught:
        _load((tmp_path / "missing.pem", service[1]), service)
    assert "PTA_CA_PTA_CA_CERT_FILE" in caught.value.message


@pytest.mark.parametrize("serial", [1, 0xABCDEF, (1 << 159) - 1])
def test_serial_round_trip(serial: int) -> None:
    stored = serial_hex(serial)
    assert stored == stored.lower() and not stored.startswith("0")
    assert serial_int(stored) == serial
