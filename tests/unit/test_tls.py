"""Unit tests for common.tls: context settings and real handshakes on 127.0.0.1.

The listener is plain TCP on an OS-assigned loopback port; each connection upgrades with
``StreamWriter.start_tls(server_context(...))`` so the server-side outcome (the verified
peer certificate, or the handshake error) is handed to the test through a queue instead
of a log line. Every wait is bounded by ``asyncio.timeout``; the server stops when the
``serve`` block ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from common import pki, tls

TENANT = "5d2a1c3e-7b4f-4c1a-9e0d-2f6b8a9c0d11"
AGENT = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
TIMEOUT_S = 5.0
ANONYMOUS = b"anonymous"


@dataclass(frozen=True)
class Files:
    """PEM files of a small PKI: service TLS CA, PTA CA, a rogue CA and their leaves."""

    tls_ca: Path
    server_cert: Path
    server_key: Path
    pta_ca: Path
    agent_cert: Path
    agent_key: Path
    rogue_cert: Path
    rogue_key: Path
    pta_server_cert: Path
    pta_server_key: Path


def _write_pair(
    directory: Path, name: str, cert: x509.Certificate, key: pki.PrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(pki.certificate_pem(cert))
    pki.write_private_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    # The handshake checks dates against the real clock, so this PKI is made "now".
    now = dt.datetime.now(dt.UTC)
    directory = tmp_path_factory.mktemp("pki")
    tls_ca = pki.make_ca("service TLS CA", now=now, lifetime_days=30)
    pta_ca = pki.make_ca("PTA CA", now=now, lifetime_days=30)
    rogue_ca = pki.make_ca("PTA CA", now=now, lifetime_days=30)  # same name, other key
    server = pki.issue_server_cert(
        *tls_ca, hostnames=["localhost"], ips=["127.0.0.1"], now=now, lifetime_days=7
    )
    # A serverAuth-only certificate from the PTA CA: right issuer, wrong purpose.
    pta_server = pki.issue_server_cert(
        *pta_ca, hostnames=["agent.test"], ips=[], now=now, lifetime_days=7
    )

    def agent(
        ca: tuple[x509.Certificate, pki.PrivateKey],
    ) -> tuple[x509.Certificate, pki.PrivateKey]:
        key = pki.new_rsa_key()
        cert = pki.sign_agent_csr(
            pki.new_agent_csr(key), issuer_cert=ca[0], issuer_key=ca[1], tenant_id=TENANT,
            agent_id=AGENT, now=now, lifetime_days=7,
        )  # fmt: skip
        return cert, key

    (directory / "tls-ca.pem").write_bytes(pki.certificate_pem(tls_ca[0]))
    (directory / "pta-ca.pem").write_bytes(pki.certificate_pem(pta_ca[0]))
    server_cert, server_key = _write_pair(directory, "server", *server)
    agent_cert, agent_key = _write_pair(directory, "agent", *agent(pta_ca))
    rogue_cert, rogue_key = _write_pair(directory, "rogue", *agent(rogue_ca))
    pta_server_cert, pta_server_key = _write_pair(directory, "pta-server", *pta_server)
    return Files(
        tls_ca=directory / "tls-ca.pem",
        server_cert=server_cert,
        server_key=server_key,
        pta_ca=directory / "pta-ca.pem",
        agent_cert=agent_cert,
        agent_key=agent_key,
        rogue_cert=rogue_cert,
        rogue_key=rogue_key,
        pta_server_cert=pta_server_cert,
        pta_server_key=pta_server_key,
    )


# --------------------------------------------------------------------------- harness

Outcome = x509.Certificate | None | BaseException


@dataclass
class Server:
    port: int
    outcomes: asyncio.Queue[Outcome]

    async def outcome(self) -> Outcome:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.outcomes.get()


@asynccontextmanager
async def serve(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """A loopback TLS server that reports each handshake and answers with the peer's CN."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    await writer.start_tls(context)
            except (ssl.SSLError, OSError) as exc:
                outcomes.put_nowait(exc)
                return
            peer = tls.peer_certificate(writer.transport)
            outcomes.put_nowait(peer)
            if peer is None:
                writer.write(ANONYMOUS)
            else:
                writer.write(pki.agent_identity(peer).tenant_id.encode())
            await writer.drain()
        finally:
            writer.close()
            with suppress(ssl.SSLError, OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Server(port=server.sockets[0].getsockname()[1], outcomes=outcomes)
    finally:
        server.close()
        async with asyncio.timeout(TIMEOUT_S):
            await server.wait_closed()
            await asyncio.gather(*handlers, return_exceptions=True)


async def exchange(
    port: int, context: ssl.SSLContext, host: str = "127.0.0.1"
) -> bytes | BaseException:
    """Connect, read the server's answer to the end; return it or the client's error."""
    async with asyncio.timeout(TIMEOUT_S):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=host
            )
        except (ssl.SSLError, ConnectionError) as exc:
            return exc
        try:
            return await reader.read()
        except (ssl.SSLError, ConnectionError) as exc:
            return exc
        finally:
            writer.close()
            with suppress(ssl.SSLError, OSError):
                await writer.wait_closed()


def _reason(outcome: Outcome) -> str:
    assert isinstance(outcome, ssl.SSLError), f"expected a handshake failure, got {outcome!r}"
    return str(outcome.reason)


# --------------------------------------------------------------------------- contexts


def test_context_settings(files: Files) -> None:
    plain = tls.server_context(files.server_cert, files.server_key)
    optional = tls.server_context(files.server_cert, files.server_key, client_ca_file=files.pta_ca)
    required = tls.server_context(
        files.server_cert, files.server_key, client_ca_file=files.pta_ca, require_client_cert=True
    )
    client = tls.client_context(files.tls_ca)
    assert [c.verify_mode for c in (plain, optional, required)] == [
        ssl.CERT_NONE,
        ssl.CERT_OPTIONAL,
        ssl.CERT_REQUIRED,
    ]
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert not client.hostname_checks_common_name
    for context in (plain, optional, required, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)
    # Our bundle only: the system store is never loaded.
    assert client.cert_store_stats()["x509_ca"] == 1
    assert [ca["subject"] for ca in client.get_ca_certs()] == [
        ((("commonName", "service TLS CA"),),)
    ]
    assert plain.cert_store_stats()["x509_ca"] == 0


def test_config_errors_name_the_file_and_setting(files: Files, tmp_path: Path) -> None:
    with pytest.raises(tls.TlsConfigError, match="require_client_cert needs client_ca_file"):
        tls.server_context(files.server_cert, files.server_key, require_client_cert=True)
    missing = tmp_path / "missing.pem"
    with pytest.raises(tls.TlsConfigError, match=r"missing\.pem.*ca_file"):
        tls.client_context(missing)
    with pytest.raises(tls.TlsConfigError, match=r"missing\.pem.*client_ca_file"):
        tls.server_context(files.server_cert, files.server_key, client_ca_file=missing)
    with pytest.raises(tls.TlsConfigError, match="cert_file and key_file"):
        tls.server_context(files.server_cert, files.agent_key)  # key of another cert
    with pytest.raises(tls.TlsConfigError, match="key_file was given without cert_file"):
        tls.client_context(files.tls_ca, key_file=files.agent_key)
    with pytest.raises(tls.TlsConfigError, match="ca_file"):
        tls.client_context(files.agent_key)  # a key is not a CA bundle
    with pytest.raises(tls.TlsConfigError, match="holds no CA"):
        tls.client_context(files.agent_cert)  # a leaf is not a CA either


def test_peer_certificate_without_tls() -> None:
    assert tls.peer_certificate(None) is None
    assert tls.peer_certificate(asyncio.BaseTransport()) is None  # plain TCP: no ssl_object


# --------------------------------------------------------------------------- handshakes


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_server_auth_round_trip(files: Files, host: str) -> None:
    async with serve(tls.server_context(files.server_cert, files.server_key)) as server:
        reply = await exchange(server.port, tls.client_context(files.tls_ca), host)
        assert reply == ANONYMOUS
        assert await server.outcome() is None


@pytest.mark.parametrize(
    ("ca", "host"),
    [("pta_ca", "127.0.0.1"), ("tls_ca", "sts.example")],
    ids=["server-from-another-ca", "wrong-host-name"],
)
async def test_client_refuses_unverified_server(files: Files, ca: str, host: str) -> None:
    async with serve(tls.server_context(files.server_cert, files.server_key)) as server:
        reply = await exchange(server.port, tls.client_context(getattr(files, ca)), host)
        assert isinstance(reply, ssl.SSLCertVerificationError)
        # The server sees the client's alert or its abrupt close; either way no peer.
        assert isinstance(await server.outcome(), ssl.SSLError | ConnectionError)


async def test_mutual_tls_accepts_agent(files: Files) -> None:
    server_ctx = tls.server_context(
        files.server_cert, files.server_key, client_ca_file=files.pta_ca, require_client_cert=True
    )
    client_ctx = tls.client_context(
        files.tls_ca, cert_file=files.agent_cert, key_file=files.agent_key
    )
    async with serve(server_ctx) as server:
        reply = await exchange(server.port, client_ctx)
        peer = await server.outcome()
    assert reply == TENANT.encode()
    assert isinstance(peer, x509.Certificate)
    assert peer == pki.load_certificate_pem(files.agent_cert.read_bytes())
    assert pki.agent_identity(peer).agent_id == AGENT


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("none", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("rogue", "CERTIFICATE_VERIFY_FAILED"),
        ("pta_server", "CERTIFICATE_VERIFY_FAILED"),  # serverAuth EKU is not clientAuth
    ],
)
async def test_mutual_tls_required_refuses(files: Files, client: str, reason: str) -> None:
    server_ctx = tls.server_context(
        files.server_cert, files.server_key, client_ca_file=files.pta_ca, require_client_cert=True
    )
    async with serve(server_ctx) as server:
        reply = await exchange(server.port, _client(files, client))
        outcome = await server.outcome()
    assert _reason(outcome) == reason
    assert reply != ANONYMOUS and reply != TENANT.encode()


@pytest.mark.parametrize(
    ("client", "expected"),
    [("none", ANONYMOUS), ("agent", TENANT.encode()), ("rogue", None)],
)
async def test_optional_client_cert_serves_both_kinds(
    files: Files, client: str, expected: bytes | None
) -> None:
    """One listener: bearer-token clients without a certificate, agents with one."""
    server_ctx = tls.server_context(
        files.server_cert, files.server_key, client_ca_file=files.pta_ca
    )
    async with serve(server_ctx) as server:
        reply = await exchange(server.port, _client(files, client))
        outcome = await server.outcome()
    if expected is None:  # a presented certificate is verified even when optional
        assert _reason(outcome) == "CERTIFICATE_VERIFY_FAILED"
        assert not isinstance(reply, bytes) or reply == b""
    else:
        assert reply == expected


def _client(files: Files, which: str) -> ssl.SSLContext:
    if which == "none":
        return tls.client_context(files.tls_ca)
    cert, key = {
        "agent": (files.agent_cert, files.agent_key),
        "rogue": (files.rogue_cert, files.rogue_key),
        "pta_server": (files.pta_server_cert, files.pta_server_key),
    }[which]
    return tls.client_context(files.tls_ca, cert_file=cert, key_file=key)


def _legacy_client(files: Files, maximum: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client that really offers old protocol versions (SECLEVEL=0 re-enables them)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.tls_ca)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = maximum
    context.set_ciphers(ciphers)
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_refused(files: Files) -> None:
    client_ctx = _legacy_client(files, ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    async with serve(tls.server_context(files.server_cert, files.server_key)) as server:
        reply = await exchange(server.port, client_ctx)
        outcome = await server.outcome()
    assert _reason(outcome) == "UNSUPPORTED_PROTOCOL"
    assert not isinstance(reply, bytes) or reply == b""


async def test_tls_1_2_aead_accepted_and_cbc_refused(files: Files) -> None:
    server_ctx = tls.server_context(files.server_cert, files.server_key)
    async with serve(server_ctx) as server:
        aead = _legacy_client(files, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert await exchange(server.port, aead) == ANONYMOUS
        assert await server.outcome() is None
        cbc = _legacy_client(files, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA")
        reply = await exchange(server.port, cbc)
        assert _reason(await server.outcome()) == "NO_SHARED_CIPHER"
        assert not isinstance(reply, bytes) or reply == b""
