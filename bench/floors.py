"""The benchmark's floors: what the directory and the crypto give at most, and message size.

Each function measures one thing and returns a JSON-able dict; ``python -m bench.floors
<directory|crypto|message-size> ...`` runs one in its own process and prints the dict as
JSON, so that ``bench.run`` can pin it to one core with ``taskset`` exactly like the agent
it is compared with.

- ``directory_floor``: ldap3 simple binds per second against the stack's slapd from
  ``threads`` threads (default: the agent's ``LdapDirectorySettings.pool_size``), each
  rebinding one open connection (TCP_NODELAY) as bulk users with the password policy
  request control, as the agent binds. Also ``search_bind_per_s``: the agent's whole
  directory work per sign-in (search the user as the service account, then bind).
- ``crypto_floor``: RSA-2048 OAEP-SHA256 private decrypts per second in one thread (the
  agent's per-request RSA cost), and full ``envelope.open_`` calls per second.
- ``message_sizes``: bytes of a request body (``wire.encode_request`` of a real
  ``envelope.seal``) for 1, 3 and 40 recipients, against the estimate in docs/design.md §4 of
  0.5 KB + 0.35 KB per agent.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import ldap3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agent.ldap_directory import LdapDirectorySettings
from bench.target import DEFAULT_STACK_JSON, StackTarget, TenantInfo, load_stack
from common.envelope import kid_for, new_reply_key, open_, seal
from common.ppolicy import request_control
from common.wire import encode_request

__all__ = [
    "AGENT_POOL_SIZE",
    "crypto_floor",
    "design_request_bytes",
    "directory_floor",
    "main",
    "message_sizes",
]


# The thread-pool size the agent's LDAP adapter uses unless configured otherwise.
def _agent_pool_size() -> int:
    default = LdapDirectorySettings.__dataclass_fields__["pool_size"].default
    return default if isinstance(default, int) else 8


AGENT_POOL_SIZE: Final[int] = _agent_pool_size()
_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_CHECK_EVERY: Final = 32  # iterations between clock reads in the timed loops


class FloorError(RuntimeError):
    """A floor could not be measured; the message says what failed."""


def _server(url: str, timeout_s: float = 5.0) -> ldap3.Server:
    return ldap3.Server(url, connect_timeout=timeout_s, get_info=ldap3.NONE)


def _connect(server: ldap3.Server, dn: str, password: str) -> ldap3.Connection:
    conn = ldap3.Connection(
        server, user=dn, password=password, receive_timeout=10, raise_exceptions=False
    )
    conn.open()
    sock = conn.socket
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not conn.bind():
        raise FloorError(f"bind as {dn} refused: {conn.result.get('description')}")
    return conn


def _bulk_dns(target: StackTarget, tenant: TenantInfo, count: int) -> list[tuple[str, str]]:
    """(DN, uid) of the first ``count`` bulk users, found as the service account."""
    conn = _connect(_server(target.ldap_url), tenant.service_dn, tenant.service_password)
    try:
        out = []
        for n in range(1, min(count, tenant.bulk.count) + 1):
            uid = tenant.bulk.username(n).split("@", 1)[0]
            conn.search(tenant.base_dn, f"(&(objectClass=inetOrgPerson)(uid={uid}))", attributes=[])
            if len(conn.entries) != 1:
                raise FloorError(f"bulk user {uid} not found once under {tenant.base_dn}")
            out.append((conn.entries[0].entry_dn, uid))
        return out
    finally:
        conn.unbind()


def directory_floor(
    target: StackTarget,
    tenant: TenantInfo,
    *,
    threads: int = AGENT_POOL_SIZE,
    seconds: float = 5.0,
    users: int = 200,
) -> dict[str, Any]:
    """Binds/s (and search+bind/s) from ``threads`` threads for ``seconds`` each phase.

    Raises ``FloorError`` when the directory refuses the service account or a user.
    """
    server = _server(target.ldap_url)
    dns = _bulk_dns(target, tenant, users)
    password = tenant.bulk.password
    controls = [request_control()]

    def phase(with_search: bool) -> tuple[int, int, float]:
        ok = [0] * threads
        failed = [0] * threads
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads + 1)
        stop_at = [0.0]

        def work(i: int) -> None:
            try:
                binder = _connect(server, dns[i % len(dns)][0], password)
                searcher = (
                    _connect(server, tenant.service_dn, tenant.service_password)
                    if with_search
                    else None
                )
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()
                return
            try:
                barrier.wait()
                k = i
                while True:
                    for _ in range(_CHECK_EVERY):
                        dn, uid = dns[k % len(dns)]
                        k += threads
                        if searcher is not None:
                            searcher.search(
                                tenant.base_dn,
                                f"(&(objectClass=inetOrgPerson)(uid={uid}))",
                                attributes=[],
                            )
                            dn = searcher.entries[0].entry_dn if searcher.entries else dn
                        if binder.rebind(user=dn, password=password, controls=controls):
                            ok[i] += 1
                        else:
                            failed[i] += 1
                    if time.monotonic() >= stop_at[0]:
                        return
            finally:
                binder.unbind()
                if searcher is not None:
                    searcher.unbind()

        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
        for w in workers:
            w.start()
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            for w in workers:
                w.join(5)
            raise FloorError(f"LDAP workers could not start: {errors[:1]}") from None
        t0 = time.monotonic()
        stop_at[0] = t0 + seconds
        for w in workers:
            w.join(seconds + 30)
        elapsed = time.monotonic() - t0
        return sum(ok), sum(failed), elapsed

    binds, bind_failures, bind_s = phase(with_search=False)
    pairs, pair_failures, pair_s = phase(with_search=True)
    if bind_failures or pair_failures:
        raise FloorError(
            f"{bind_failures + pair_failures} binds of bulk users failed (locked out? "
            "a wrong password was sent to them within 15 minutes)"
        )
    return {
        "threads": threads,
        "ldap_url": target.ldap_url,
        "binds": binds,
        "binds_per_s": round(binds / bind_s, 1),
        "search_binds": pairs,
        "search_bind_per_s": round(pairs / pair_s, 1),
        "seconds": round(bind_s + pair_s, 2),
    }


def crypto_floor(*, seconds: float = 3.0) -> dict[str, Any]:
    """RSA-2048 OAEP-SHA256 decrypts/s and ``envelope.open_``/s in this one thread."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrapped = key.public_key().encrypt(b"k" * 32, _OAEP)

    def rate(step: Any) -> tuple[float, int]:
        n = 0
        t0 = time.perf_counter()
        stop = t0 + seconds / 2
        while True:
            for _ in range(_CHECK_EVERY):
                step()
            n += _CHECK_EVERY
            now = time.perf_counter()
            if now >= stop:
                return n / (now - t0), n

    decrypts_per_s, decrypts = rate(lambda: key.decrypt(wrapped, _OAEP))
    kid = kid_for(key.public_key())
    now = time.time()
    envelope = seal(
        password="a password of usual length",  # noqa: S106 -- benchmark payload, no account
        reply_key=new_reply_key(),
        recipients=[(kid, key.public_key())],
        request_id=str(uuid.uuid4()),
        tenant_id=str(uuid.uuid4()),
        username="user0001@contoso.test",
        issued_at=now,
        expires_at=now + 10,
    )
    opens_per_s, opens = rate(lambda: open_(envelope, key, kid))
    return {
        "rsa_decrypts_per_s": round(decrypts_per_s, 1),
        "rsa_decrypt_us": round(1e6 / decrypts_per_s, 1),
        "envelope_opens_per_s": round(opens_per_s, 1),
        "samples": decrypts + opens,
    }


def design_request_bytes(agents: int) -> int:
    """the estimate in docs/design.md §4 of a request: about 0.5 KB + 0.35 KB per agent."""
    return round(500 + 350 * agents)


def message_sizes(
    counts: Sequence[int] = (1, 3, 40), *, username: str = "user0001@contoso.test"
) -> dict[str, Any]:
    """Request body bytes for each recipient count (fresh RSA-2048 keys, real seal)."""
    keys = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(max(counts))
    ]
    recipients = [(kid_for(k.public_key()), k.public_key()) for k in keys]
    now = time.time()
    out: dict[str, Any] = {}
    for n in counts:
        envelope = seal(
            password="Pw-" + "x" * 18,  # the length of the stack's generated passwords
            reply_key=new_reply_key(),
            recipients=recipients[:n],
            request_id=str(uuid.uuid4()),
            tenant_id=str(uuid.uuid4()),
            username=username,
            issued_at=now,
            expires_at=now + 10,
        )
        size = len(encode_request(envelope))
        out[str(n)] = {"bytes": size, "design_bytes": design_request_bytes(n)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.floors <what>``: measure one floor and print it as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__)
    parser.add_argument("what", choices=["directory", "crypto", "message-size"])
    parser.add_argument("--stack-json", type=Path, default=DEFAULT_STACK_JSON)
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=AGENT_POOL_SIZE)
    args = parser.parse_args(argv)
    try:
        if args.what == "directory":
            target = load_stack(args.stack_json)
            result = directory_floor(
                target, target.tenant(args.tenant), threads=args.threads, seconds=args.seconds
            )
        elif args.what == "crypto":
            result = crypto_floor(seconds=args.seconds)
        else:
            result = message_sizes()
    except Exception as exc:  # the top of a process: report and exit non-zero
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
