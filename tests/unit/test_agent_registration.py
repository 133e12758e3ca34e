"""Registration pieces that need no network: the CSR, tenant ids, checking the CA's answer."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agent import registration
from agent.cloud import IssuedCertificate
from agent.registration import CertificateMismatch, check_issued
from common import pki
from tests.support.agent_state import Issued, issue

NOW = dt.datetime.now(dt.UTC)


def test_csr_is_rsa_2048_without_extensions_and_signed() -> None:
    key, csr_pem = registration.new_key_and_csr()
    csr = x509.load_pem_x509_csr(csr_pem)
    public = csr.public_key()
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    assert public.public_numbers().e == 65537
    assert pki.spki_der(public) == pki.spki_der(key.public_key())
    assert len(csr.extensions) == 0
    assert list(csr.attributes) == []
    assert list(csr.subject) == []  # the CA decides subject and SAN
    assert csr.is_signature_valid
    # The signature checks out against the CSR's own key, by hand too.
    assert csr.signature_hash_algorithm is not None
    public.verify(
        csr.signature, csr.tbs_certrequest_bytes, padding.PKCS1v15(),
        csr.signature_hash_algorithm,
    )  # fmt: skip


def test_csr_passes_the_cas_own_vetting() -> None:
    _, csr_pem = registration.new_key_and_csr()
    pki.validate_csr(csr_pem)  # raises CsrRejected on any problem


def test_each_csr_has_a_fresh_key() -> None:
    first, _ = registration.new_key_and_csr()
    second, _ = registration.new_key_and_csr()
    assert pki.spki_der(first.public_key()) != pki.spki_der(second.public_key())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("contoso.test", None),
        ("5B1E1F3C-0D7A-4F4E-9A52-0F8D8C2C1A11", "5b1e1f3c-0d7a-4f4e-9a52-0f8d8c2c1a11"),
        ("5b1e1f3c-0d7a-4f4e-9a52-0f8d8c2c1a11", "5b1e1f3c-0d7a-4f4e-9a52-0f8d8c2c1a11"),
    ],
)
def test_tenant_id_of(given: str, expected: str | None) -> None:
    assert registration.tenant_id_of(given) == expected


def _answer(issued: Issued, **changes: str) -> IssuedCertificate:
    fields = {
        "agent_id": issued.agent_id,
        "tenant_id": issued.tenant_id,
        "certificate": pki.certificate_pem(issued.certificate).decode(),
        "ca_certificate": pki.certificate_pem(issued.pta_ca).decode(),
        "not_after": issued.certificate.not_valid_after_utc.isoformat(),
        "kid": pki.spki_sha256_kid(issued.key.public_key()),
    }
    fields.update(changes)
    return IssuedCertificate.model_validate(fields)


def test_a_fitting_answer_is_accepted() -> None:
    issued = issue()
    cert, chain = check_issued(_answer(issued), issued.key, tenant_id=issued.tenant_id, now=NOW)
    assert cert == issued.certificate and chain == [issued.pta_ca]


def test_certificate_for_another_key_is_refused() -> None:
    issued = issue()
    with pytest.raises(CertificateMismatch, match="another key"):
        check_issued(_answer(issued), pki.new_rsa_key(), tenant_id=None, now=NOW)


def test_answer_naming_another_agent_is_refused() -> None:
    issued = issue()
    with pytest.raises(CertificateMismatch, match="another agent"):
        check_issued(
            _answer(issued, agent_id=str(uuid.uuid4())), issued.key, tenant_id=None, now=NOW
        )


def test_registration_in_another_tenant_is_refused() -> None:
    issued = issue()
    with pytest.raises(CertificateMismatch, match="registered in tenant"):
        check_issued(_answer(issued), issued.key, tenant_id=str(uuid.uuid4()), now=NOW)


def test_certificate_not_issued_by_the_returned_ca_is_refused() -> None:
    issued, stranger = issue(), issue()
    answer = _answer(issued, ca_certificate=pki.certificate_pem(stranger.pta_ca).decode())
    with pytest.raises(CertificateMismatch, match="signature"):
        check_issued(answer, issued.key, tenant_id=None, now=NOW)


def test_garbage_certificate_is_refused() -> None:
    issued = issue()
    with pytest.raises(CertificateMismatch):
        check_issued(_answer(issued, certificate="nope"), issued.key, tenant_id=None, now=NOW)
