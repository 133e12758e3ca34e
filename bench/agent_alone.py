"""Benchmark step 3: validations per second of one agent process pinned to one core.

How it is measured:
1. every agent of the tenant is stopped through the stack's supervisord (they compete for
   the tenant queue); the ones that were running are started again in ``finally``, and
   the step waits until the queue has its consumers back;
2. one ``pta-agent run`` for the first agent's state folder is started under
   ``taskset -c <cpu>`` with the supervised program's own command and environment;
3. this process (moved off that core while the step runs) is the publisher: it builds
   real envelopes with ``envelope.seal`` for all the tenant's agents' keys (read from
   their ``agent.crt``), as the STS does, for bulk users with their right password, and
   publishes them straight to ``pta.tenant.<id>`` in the tenant's vhost as the STS's broker
   user (agents handle requests from no other publisher), with ``reply_to`` a private
   exclusive queue bound to ``pta.replies``; it keeps ``window`` requests outstanding;
4. after the agent's first reply and a warm-up, replies are counted for ``seconds``:
   ``validations_per_s`` = MAC-verified ``success`` replies per second; the agent's CPU
   use over the window (psutil) says whether it saturated its core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aio_pika
import aio_pika.abc
import psutil
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from yarl import URL

from bench import stats
from bench.stackctl import Supervisorctl, wait_consumers
from bench.target import StackTarget, TenantInfo
from common.contracts import REPLY_EXCHANGE, tenant_queue, tenant_vhost, vhost_url
from common.envelope import kid_for, new_reply_key, seal, verify_reply
from common.wire import Status, WireError, decode_reply, request_message

__all__ = ["AgentAloneError", "agent_alone"]

DEADLINE_S: Final = 10.0  # the STS's default request deadline (docs/design.md §3.3)
READY_TIMEOUT_S: Final = 60.0


class AgentAloneError(RuntimeError):
    """The pinned agent could not be measured; see its log (path in the message)."""


def _recipients(target: StackTarget, tenant: TenantInfo) -> list[tuple[str, RSAPublicKey]]:
    out = []
    for agent in target.agents_of(tenant.id):
        cert = x509.load_pem_x509_certificate((agent.state_dir / "agent.crt").read_bytes())
        key = cert.public_key()
        if not isinstance(key, RSAPublicKey):
            raise AgentAloneError(f"{agent.name}'s certificate does not hold an RSA key")
        out.append((kid_for(key), key))
    return out


@dataclass(slots=True)
class _Window:
    """Outstanding requests and the replies seen, keyed by request id."""

    size: int
    pending: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    done: list[tuple[float, float, str]] = field(default_factory=list)  # (at, ms, status)
    bad_mac: int = 0
    undecodable: int = 0
    stray: int = 0
    lost: int = 0
    first_reply: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.room = asyncio.Semaphore(self.size)

    async def on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.monotonic()
        try:
            reply = decode_reply(message.body)
        except WireError:
            self.undecodable += 1
            return
        entry = self.pending.pop(reply.request_id, None)
        if entry is None:
            self.stray += 1
            return
        self.room.release()
        reply_key, sent_at = entry
        if not verify_reply(reply, reply_key):
            self.bad_mac += 1
            return
        self.done.append((now, (now - sent_at) * 1000.0, str(reply.status)))
        self.first_reply.set()

    def sweep(self, now: float) -> None:
        """Forget requests past their deadline (the agent dropped or lost them)."""
        for rid, (_, sent_at) in list(self.pending.items()):
            if now - sent_at > DEADLINE_S + 2:
                del self.pending[rid]
                self.lost += 1
                self.room.release()


async def agent_alone(
    target: StackTarget,
    tenant: TenantInfo,
    *,
    seconds: float = 10.0,
    warmup_s: float = 3.0,
    window: int = 64,
    cpu: int = 0,
    log_path: Path,
) -> dict[str, Any]:
    """Measure one pinned agent (see module docstring). Raises ``AgentAloneError`` or
    ``StackControlError``; the tenant's agents are restored in every case."""
    agents = target.agents_of(tenant.id)
    if not agents:
        raise AgentAloneError(f"tenant {tenant.domain} has no registered agent in stack.json")
    chosen = agents[0]
    recipients = _recipients(target, tenant)
    queue_name = tenant_queue(tenant.id)
    ctl = Supervisorctl(target.state_dir)
    names = [a.name for a in agents]
    states = ctl.states()
    was_running = [n for n in names if states.get(n) == "RUNNING"]
    spec = ctl.program(chosen.name)
    affinity = os.sched_getaffinity(0)
    agent: asyncio.subprocess.Process | None = None
    ctl.stop(names)
    try:
        await wait_consumers(target, tenant.id, 0, timeout_s=30)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            agent = await asyncio.create_subprocess_exec(
                "taskset",
                "-c",
                str(cpu),
                *spec.command,
                env={**os.environ, **spec.env},
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        others = affinity - {cpu}
        if others:
            os.sched_setaffinity(0, others)  # the publisher stays off the agent's core
        return await _measure(
            target,
            tenant,
            recipients,
            queue_name,
            agent=agent,
            seconds=seconds,
            warmup_s=warmup_s,
            window=window,
            log_path=log_path,
        ) | {"agent": chosen.name, "cpu": cpu, "recipients": len(recipients)}
    finally:
        os.sched_setaffinity(0, affinity)
        if agent is not None and agent.returncode is None:
            agent.terminate()
            try:
                async with asyncio.timeout(25):
                    await agent.wait()
            except TimeoutError:
                agent.kill()
                await agent.wait()
        ctl.start(was_running)
        if was_running:
            await wait_consumers(target, tenant.id, len(was_running), timeout_s=60)


async def _measure(
    target: StackTarget,
    tenant: TenantInfo,
    recipients: list[tuple[str, RSAPublicKey]],
    queue_name: str,
    *,
    agent: asyncio.subprocess.Process,
    seconds: float,
    warmup_s: float,
    window: int,
    log_path: Path,
) -> dict[str, Any]:
    sts_url = vhost_url(target.amqp_sts_url, tenant_vhost(tenant.id))
    connection = await aio_pika.connect(sts_url, timeout=10)
    publisher = URL(sts_url).user or ""
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        # A name the STS's user may declare (ca.broker_admin.sts_permissions).
        replies = await channel.declare_queue(
            f"sts.bench.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True
        )
        exchange = await channel.get_exchange(REPLY_EXCHANGE)
        await replies.bind(exchange, routing_key=replies.name)
        state = _Window(window)
        await replies.consume(state.on_reply, no_ack=True)
        bulk = tenant.bulk
        good = max(1, bulk.count - max(1, bulk.count // 4))  # pta-load's good slice
        counter = 0

        async def publish_one() -> None:
            nonlocal counter
            counter += 1
            request_id = str(uuid.uuid4())
            reply_key = new_reply_key()
            now = time.time()
            envelope = seal(
                password=bulk.password,
                reply_key=reply_key,
                recipients=recipients,
                request_id=request_id,
                tenant_id=tenant.id,
                username=bulk.username(1 + counter % good),
                issued_at=now,
                expires_at=now + DEADLINE_S,
            )
            message = request_message(
                envelope,
                reply_to=replies.name,
                correlation_id=request_id,
                expiration_s=DEADLINE_S,
                publisher=publisher,
            )
            state.pending[request_id] = (reply_key, time.monotonic())
            await channel.default_exchange.publish(message, routing_key=queue_name)

        # Readiness: one probe a second until the agent answers (it bootstraps first).
        t_ready = time.monotonic()
        while not state.first_reply.is_set():
            if agent.returncode is not None:
                raise AgentAloneError(f"the agent exited with {agent.returncode}; see {log_path}")
            if time.monotonic() - t_ready > READY_TIMEOUT_S:
                raise AgentAloneError(
                    f"no reply from the pinned agent within {READY_TIMEOUT_S:.0f} s; see {log_path}"
                )
            await state.room.acquire()
            await publish_one()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await state.first_reply.wait()
        ready_s = time.monotonic() - t_ready

        proc = psutil.Process(agent.pid)
        t_start = time.monotonic()
        t_a = t_start + warmup_s
        t_b = t_a + seconds
        cpu_a: float | None = None
        last_sweep = t_start
        while (now := time.monotonic()) < t_b:
            if cpu_a is None and now >= t_a:
                times = proc.cpu_times()
                cpu_a = times.user + times.system
            if now - last_sweep > 1.0:
                state.sweep(now)
                last_sweep = now
            try:
                async with asyncio.timeout(max(0.01, t_b - now)):
                    await state.room.acquire()
            except TimeoutError:
                break
            await publish_one()
        times = proc.cpu_times()
        cpu_b = times.user + times.system
        if agent.returncode is not None:
            raise AgentAloneError(f"the agent exited with {agent.returncode}; see {log_path}")

    in_window = [(at, ms, status) for at, ms, status in state.done if t_a <= at < t_b]
    statuses = Counter(status for _, _, status in in_window)
    successes = statuses.get(str(Status.SUCCESS), 0)
    latency = stats.summarize(ms for _, ms, _ in in_window)
    if not successes:
        raise AgentAloneError(
            f"the agent answered no success in the window (statuses {dict(statuses)}); "
            f"see {log_path}"
        )
    return {
        "validations_per_s": round(successes / seconds, 1),
        "replies_per_s": round(len(in_window) / seconds, 1),
        "statuses": dict(statuses),
        "latency_ms": latency.as_dict() if latency else None,
        "agent_cpu_percent": round(100.0 * (cpu_b - (cpu_a or cpu_b)) / seconds, 1),
        "window": window,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "ready_s": round(ready_s, 2),
        "bad_mac": state.bad_mac,
        "lost": state.lost,
        "stray": state.stray,
        "undecodable": state.undecodable,
    }
