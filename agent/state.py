"""The agent's state folder: who this agent is and the credentials it proves it with.

Layout (docs/architecture.md "Agent state folder"; the folder itself is mode 0700):
- ``agent.json``: ``AgentRecord`` (agent id, tenant id, CA URL, host, version, registered
  at); written last, so its presence marks a complete registration;
- ``agent.key``: the agent's RSA-2048 private key, mode 0600, never sent anywhere,
  written by ``common.pki.write_private_key`` only;
- ``agent.crt``: the agent's client certificate (PEM);
- ``pta-ca.pem``: the PTA CA that issued it;
- ``ca-bundle.pem``: the service TLS CA bundle given at registration, pinned for every
  later call to the CA and the STS;
- during a certificate renewal only (``agent.renewal``): ``renew.key`` (the new private
  key, 0600) and then ``renew.crt`` (its new certificate).

Renewal is two-phase so that a crash (SIGKILL) at any point leaves a usable identity:
the new key is written as ``renew.key`` before the CA is asked, the new certificate as
``renew.crt`` once it arrives, then ``renew.key`` replaces ``agent.key`` and ``renew.crt``
replaces ``agent.crt`` (each ``rename`` atomic, the folder fsynced). ``load`` finishes an
interrupted switch first (``recover_renewal``): a ``renew.crt`` that belongs to
``renew.key`` (or, after the first rename, to ``agent.key``) is moved into place. A
``renew.key`` without certificate is kept: the daemon asks the CA again with that key
(the CA answers a repeated request with the certificate it issued), so a crash after the
CA switched the agent to the new key is recovered too.

``load`` checks the folder as a whole (every file present and parseable, the key private
to its owner and matching the certificate, the certificate's identity matching
``agent.json``) so that a broken folder is reported at start, naming the file, rather
than as a TLS failure later. Errors derive from ``StateError``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, field_validator

from agent.errors import AgentError
from common import pki, tls

RECORD_FILE = "agent.json"
KEY_FILE = "agent.key"
CERT_FILE = "agent.crt"
PTA_CA_FILE = "pta-ca.pem"
CA_BUNDLE_FILE = "ca-bundle.pem"
PENDING_KEY_FILE = "renew.key"
PENDING_CERT_FILE = "renew.crt"
STATE_FILES = (RECORD_FILE, KEY_FILE, CERT_FILE, PTA_CA_FILE, CA_BUNDLE_FILE)
RENEWAL_FILES = (PENDING_KEY_FILE, PENDING_CERT_FILE)
SERVICE_CRL_FILE = "service-crl.pem"
"""The service TLS CA's CRL as last fetched and checked (``agent.service_crl``)."""


class StateError(AgentError):
    """The agent's state folder cannot be used."""


class NotRegistered(StateError):
    """This state folder holds no registration: run `pta-agent register` first (or point
    --state-dir / PTA_AGENT_STATE_DIR at the folder the agent was registered in)."""


class AlreadyRegistered(StateError):
    """This state folder already holds a registration: run `pta-agent unregister` first,
    or pass --force to replace it (the old agent then stays in the cloud until an admin
    deletes it or it is dropped after 10 days inactive)."""


class StateCorrupt(StateError):
    """A file of the state folder is damaged: restore it from a backup, or register the
    agent again with `pta-agent register --force`."""


class CertificateExpired(StateError):
    """This agent's certificate has expired, so the cloud refuses it: register the agent
    again with `pta-agent register --force`."""


class KeyExposed(StateError):
    """The agent's private key is readable by other users: make it private with
    `chmod 600` (and consider the key compromised: register again with --force)."""


class AgentRecord(BaseModel):
    """``agent.json``: the agent's identity, fixed at registration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_id: str
    tenant_id: str
    ca_url: str
    host: str
    version: str
    registered_at: AwareDatetime

    @field_validator("agent_id", "tenant_id")
    @classmethod
    def _canonical_uuid(cls, value: str) -> str:
        if str(uuid.UUID(value)) != value:
            raise ValueError("must be a lowercase hyphenated UUID")
        return value

    @field_validator("ca_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class StateDir:
    """Paths of the state folder's files (no I/O)."""

    path: Path

    @property
    def record(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def key(self) -> Path:
        return self.path / KEY_FILE

    @property
    def certificate(self) -> Path:
        return self.path / CERT_FILE

    @property
    def pta_ca(self) -> Path:
        return self.path / PTA_CA_FILE

    @property
    def ca_bundle(self) -> Path:
        return self.path / CA_BUNDLE_FILE

    @property
    def pending_key(self) -> Path:
        return self.path / PENDING_KEY_FILE

    @property
    def pending_certificate(self) -> Path:
        return self.path / PENDING_CERT_FILE

    @property
    def service_crl(self) -> Path:
        return self.path / SERVICE_CRL_FILE

    def existing(self) -> list[Path]:
        """The state files present, in layout order."""
        names = (*STATE_FILES, *RENEWAL_FILES, SERVICE_CRL_FILE)
        return [self.path / name for name in names if (self.path / name).exists()]


@dataclass(frozen=True, slots=True)
class Registration:
    """A loaded, checked state folder."""

    dir: StateDir
    record: AgentRecord
    certificate: x509.Certificate
    kid: str

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def ensure_valid(self, now: dt.datetime) -> None:
        """Raise CertificateExpired when the certificate is no longer valid at ``now``."""
        if self.not_after <= now:
            raise CertificateExpired(f"It expired at {self.not_after.isoformat()}.")

    def private_key(self) -> rsa.RSAPrivateKey:
        """Read the agent's private key (checking it is still private).

        Raises KeyExposed, StateCorrupt.
        """
        return _read_key(self.dir.key)

    def server_tls(self) -> ssl.SSLContext:
        """TLS to the CA, STS or broker, pinned to the bundle of the registration, and
        refusing a server certificate on the stored service CRL (``agent.service_crl``)."""
        return _client_context(self.dir.ca_bundle, crl_file=self._current_crl())

    def mutual_tls(self) -> ssl.SSLContext:
        """Mutual TLS to the CA: pinned bundle plus the agent's certificate and key (and
        the service CRL, as ``server_tls``)."""
        return _client_context(
            self.dir.ca_bundle,
            cert_file=self.dir.certificate,
            key_file=self.dir.key,
            crl_file=self._current_crl(),
        )

    def _current_crl(self) -> Path | None:
        return usable_crl(self.dir.service_crl, dt.datetime.now(dt.UTC))


def usable_crl(path: Path, now: dt.datetime) -> Path | None:
    """``path`` if it holds a CRL that is still current at ``now``; None when there is
    none, it does not parse, or it is past its next update (OpenSSL would then refuse
    every server: a CA unreachable for a day must not stop sign-ins; ``agent.service_crl``
    logs ``service_crl_unavailable`` meanwhile)."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= now:
        return None
    return path


def ensure_can_register(path: Path, *, force: bool) -> None:
    """Refuse to register over an existing registration unless ``force``.

    Any state file counts, even without ``agent.json`` (an interrupted registration).
    Raises AlreadyRegistered.
    """
    found = StateDir(path).existing()
    if found and not force:
        names = ", ".join(p.name for p in found)
        raise AlreadyRegistered(f"Found {names} in {path}.")


def load(path: Path) -> Registration:
    """Load and check the state folder at ``path``.

    Raises NotRegistered when ``agent.json`` is absent, StateCorrupt naming the file that
    is missing or damaged, KeyExposed when the key is readable by others.
    """
    folder = StateDir(path)
    try:
        raw = folder.record.read_bytes()
    except FileNotFoundError:
        raise NotRegistered(f"No {RECORD_FILE} in {path}.") from None
    except OSError as exc:
        raise StateCorrupt(f"Cannot read {folder.record}: {exc.strerror}.") from exc
    recover_renewal(folder)
    try:
        record = AgentRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise StateCorrupt(f"{folder.record} is not valid: {_summary(exc)}.") from exc
    for required in (folder.key, folder.certificate, folder.pta_ca, folder.ca_bundle):
        if not required.is_file():
            raise StateCorrupt(f"{required} is missing.")
    key = _read_key(folder.key)
    cert = _read_certificate(folder.certificate)
    _read_bundle(folder.pta_ca)
    _read_bundle(folder.ca_bundle)
    if pki.spki_der(cert.public_key()) != pki.spki_der(key.public_key()):
        raise StateCorrupt(f"{folder.certificate} does not belong to {folder.key}.")
    try:
        identity = pki.agent_identity(cert)
    except pki.PkiError as exc:
        raise StateCorrupt(f"{folder.certificate}: {exc}") from exc
    if (identity.agent_id, identity.tenant_id) != (record.agent_id, record.tenant_id):
        raise StateCorrupt(
            f"{folder.certificate} is for agent {identity.agent_id} of tenant "
            f"{identity.tenant_id}, but {folder.record} says agent {record.agent_id} of "
            f"tenant {record.tenant_id}."
        )
    return Registration(
        dir=folder, record=record, certificate=cert, kid=pki.spki_sha256_kid(key.public_key())
    )


def save(
    path: Path,
    *,
    record: AgentRecord,
    key: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
    pta_ca: list[x509.Certificate],
    ca_bundle_pem: bytes,
    force: bool,
) -> Registration:
    """Write a new registration into ``path`` (created with mode 0700 when absent).

    With ``force`` an existing registration is replaced: ``agent.json`` goes first and
    comes back last, so an interruption leaves a folder that ``load`` refuses as not
    registered rather than one that mixes two identities.
    Raises AlreadyRegistered (without ``force``), OSError for file system failures.
    """
    ensure_can_register(path, force=force)
    folder = StateDir(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if force:
        for stale in (folder.record, folder.pending_key, folder.pending_certificate):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    try:
        pki.write_private_key(folder.key, key, overwrite=force)
    except pki.KeyFileExists as exc:
        raise AlreadyRegistered(f"{folder.key} exists.") from exc
    _write_public(folder.certificate, pki.certificate_pem(certificate))
    _write_public(folder.pta_ca, pki.certificates_pem(pta_ca))
    _write_public(folder.ca_bundle, ca_bundle_pem)
    _write_public(folder.record, record.model_dump_json(indent=2).encode() + b"\n")
    return load(path)


def remove(path: Path) -> list[Path]:
    """Delete the state files (the folder stays); returns what was deleted.

    ``agent.json`` goes first so that a half-removed folder is never taken for a
    registration. Raises OSError when a file cannot be deleted.
    """
    folder = StateDir(path)
    removed = []
    for name in (*STATE_FILES, *RENEWAL_FILES, SERVICE_CRL_FILE):
        target = folder.path / name
        try:
            target.unlink()
        except FileNotFoundError:
            continue
        removed.append(target)
    return removed


def pending_renewal_key(folder: StateDir) -> rsa.RSAPrivateKey | None:
    """The key of an unfinished renewal (``renew.key``), or None. Raises StateError."""
    if not folder.pending_key.exists():
        return None
    return _read_key(folder.pending_key)


def begin_renewal(folder: StateDir, key: rsa.RSAPrivateKey) -> None:
    """Phase 1: store the new key as ``renew.key`` (0600, atomic, replacing a stale one)."""
    with contextlib.suppress(FileNotFoundError):
        folder.pending_certificate.unlink()
    pki.write_private_key(folder.pending_key, key, overwrite=True)


def store_renewed_certificate(folder: StateDir, certificate: x509.Certificate) -> None:
    """Phase 2: store the new certificate as ``renew.crt`` (atomic)."""
    _write_public(folder.pending_certificate, pki.certificate_pem(certificate))
    _fsync_directory(folder.path)


def finish_renewal(folder: StateDir) -> None:
    """Phase 3: move ``renew.key`` then ``renew.crt`` into place (``recover_renewal``)."""
    recover_renewal(folder)


def recover_renewal(folder: StateDir) -> bool:
    """Complete or clean up an interrupted renewal; True when the new identity was
    moved into place. Safe to run at any point and more than once."""
    if not folder.pending_certificate.exists():
        return False
    key_file = folder.pending_key if folder.pending_key.exists() else folder.key
    try:
        cert = _read_certificate(folder.pending_certificate)
        key = _read_key(key_file)
    except StateCorrupt:
        belongs = False
    else:
        belongs = pki.spki_der(cert.public_key()) == pki.spki_der(key.public_key())
    if not belongs:  # a stale certificate of an abandoned attempt: the old identity stays
        with contextlib.suppress(FileNotFoundError):
            folder.pending_certificate.unlink()
        return False
    with contextlib.suppress(FileNotFoundError):  # another process got there first
        os.replace(folder.pending_key, folder.key)
    _fsync_directory(folder.path)
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder.pending_certificate, folder.certificate)
    _fsync_directory(folder.path)
    return True


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = pki.read_private_key(path)
    except pki.KeyFileExposed as exc:
        raise KeyExposed(f"{exc.detail} Run: chmod 600 {path}") from exc
    except pki.PemInvalid as exc:
        raise StateCorrupt(f"{path} holds no usable private key.") from exc
    except OSError as exc:
        raise StateCorrupt(f"Cannot read {path}: {exc.strerror}.") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise StateCorrupt(f"{path} is not an RSA key.")
    return key


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return pki.load_certificates_pem(path.read_bytes())[0]
    except (pki.PemInvalid, OSError) as exc:
        raise StateCorrupt(f"{path} holds no PEM certificate.") from exc


def _read_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return pki.load_certificates_pem(path.read_bytes())
    except (pki.PemInvalid, OSError) as exc:
        raise StateCorrupt(f"{path} holds no PEM certificate.") from exc


def _client_context(
    ca_file: Path,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    crl_file: Path | None = None,
) -> ssl.SSLContext:
    try:
        return tls.client_context(
            ca_file, cert_file=cert_file, key_file=key_file, crl_file=crl_file
        )
    except tls.TlsConfigError as exc:
        raise StateCorrupt(str(exc)) from exc


def _write_public(target: Path, data: bytes) -> None:
    """Write a non-secret file atomically (temporary file, fsync, rename), mode 0644."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _summary(exc: ValidationError) -> str:
    """Field names and reasons, never the values (docs/contributing.md: no input echoed)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )
