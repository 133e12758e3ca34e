"""The agent's half of certificate renewal without servers: the crash-safe switch of the
state folder at each point a process can die, the handler keeping the old key, and when
an unrenewed agent stops (agent.state, agent.consumer, agent.renewal)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from agent import renewal, state
from agent.directory import FakeDirectory
from ca.leases import Held
from common import pki
from common.wire import Status
from sts.dispatcher import ReplyCheck, check_reply
from tests.support.agent_state import issue, saved_registration
from tests.unit.test_agent_consumer import (
    AGENT_ID,
    PASSWORD,
    USERNAME,
    _delivery,
    _handle,
    _keys,
    _request,
    _rig,
)

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def _renewed(reg: state.Registration) -> tuple[object, object]:
    """A new key and a certificate for it with the same identity."""
    key = pki.new_rsa_key()
    issued = issue(tenant_id=reg.record.tenant_id, agent_id=reg.record.agent_id, key=key)
    return key, issued.certificate


def test_killed_after_the_key_was_written_keeps_the_old_identity(tmp_path: Path) -> None:
    reg = saved_registration(tmp_path / "agent")
    key, _ = _renewed(reg)
    state.begin_renewal(reg.dir, key)  # type: ignore[arg-type]
    loaded = state.load(reg.dir.path)
    assert loaded.kid == reg.kid
    pending = state.pending_renewal_key(loaded.dir)
    assert pending is not None and pki.spki_der(pending.public_key()) == pki.spki_der(
        key.public_key()  # type: ignore[attr-defined]
    )
    assert os.stat(reg.dir.pending_key).st_mode & 0o777 == 0o600


def test_killed_after_the_certificate_was_written_loads_the_new_identity(tmp_path: Path) -> None:
    reg = saved_registration(tmp_path / "agent")
    key, cert = _renewed(reg)
    state.begin_renewal(reg.dir, key)  # type: ignore[arg-type]
    state.store_renewed_certificate(reg.dir, cert)  # type: ignore[arg-type]
    loaded = state.load(reg.dir.path)
    assert loaded.kid == pki.spki_sha256_kid(key.public_key())  # type: ignore[attr-defined]
    assert loaded.certificate == cert
    assert not reg.dir.pending_key.exists() and not reg.dir.pending_certificate.exists()


def test_killed_between_the_two_renames_loads_the_new_identity(tmp_path: Path) -> None:
    reg = saved_registration(tmp_path / "agent")
    key, cert = _renewed(reg)
    state.begin_renewal(reg.dir, key)  # type: ignore[arg-type]
    state.store_renewed_certificate(reg.dir, cert)  # type: ignore[arg-type]
    os.replace(reg.dir.pending_key, reg.dir.key)  # the first rename only
    loaded = state.load(reg.dir.path)
    assert loaded.certificate == cert
    assert loaded.kid == pki.spki_sha256_kid(key.public_key())  # type: ignore[attr-defined]


def test_a_stale_certificate_of_another_key_is_dropped(tmp_path: Path) -> None:
    reg = saved_registration(tmp_path / "agent")
    _, cert = _renewed(reg)
    state.store_renewed_certificate(reg.dir, cert)  # type: ignore[arg-type]
    loaded = state.load(reg.dir.path)
    assert loaded.kid == reg.kid
    assert not reg.dir.pending_certificate.exists()


def test_register_force_removes_an_unfinished_renewal(tmp_path: Path) -> None:
    reg = saved_registration(tmp_path / "agent")
    key, _ = _renewed(reg)
    state.begin_renewal(reg.dir, key)  # type: ignore[arg-type]
    assert reg.dir.pending_key in state.StateDir(reg.dir.path).existing()
    issued = issue()
    state.save(
        reg.dir.path,
        record=state.AgentRecord.model_validate(
            {**reg.record.model_dump(), "agent_id": issued.agent_id, "tenant_id": issued.tenant_id}
        ),
        key=issued.key,
        certificate=issued.certificate,
        pta_ca=[issued.pta_ca],
        ca_bundle_pem=issued.service_ca_pem,
        force=True,
    )
    assert not reg.dir.pending_key.exists()


# -- the handler keeps the old key for requests sealed before the switch -------------------------


async def test_a_request_sealed_for_the_old_key_is_opened_after_the_switch() -> None:
    agent_keys, other_keys = _keys(), _keys()
    rig = _rig(agent_keys, FakeDirectory(users={USERNAME: (PASSWORD, Status.SUCCESS)}))
    old_envelope, _ = _request(agent_keys)
    rig.handler.use_key(other_keys.kid, other_keys.private)
    assert rig.handler.kid == other_keys.kid
    await _handle(rig, _delivery(old_envelope))
    new_envelope, _ = _request(other_keys)
    await _handle(rig, _delivery(new_envelope))
    assert [r.status for r in rig.capture.replies()] == [Status.SUCCESS, Status.SUCCESS]
    # Past the longest request lifetime the old key goes; the current one never does.
    rig.handler.forget_key(agent_keys.kid)
    rig.handler.forget_key(other_keys.kid)
    assert rig.handler.kids == (other_keys.kid,)
    late, _ = _request(agent_keys)
    await _handle(rig, _delivery(late))
    assert rig.capture.replies()[-1].status is Status.KEY_NOT_FOUND


async def test_each_reply_names_the_key_that_opened_its_request_so_the_sts_believes_it() -> None:
    # Around a renewal the STS seals for the old kid, then (from the CA's commit, before
    # the agent has switched) for the new one; it believes a reply only from the kid it
    # sealed for, so the reply must name the key that opened the request.
    old_keys, new_keys = _keys(), _keys()
    rig = _rig(old_keys, FakeDirectory(users={USERNAME: (PASSWORD, Status.SUCCESS)}))
    rig.handler.accept_key(new_keys.kid, new_keys.private)  # renewal asked, not switched
    assert rig.handler.kid == old_keys.kid
    sealed_new, key_new = _request(new_keys)
    await _handle(rig, _delivery(sealed_new))
    rig.handler.use_key(new_keys.kid, new_keys.private)  # switched
    sealed_old, key_old = _request(old_keys)
    await _handle(rig, _delivery(sealed_old))
    replies = rig.capture.replies()
    assert [(r.status, r.kid) for r in replies] == [
        (Status.SUCCESS, new_keys.kid),
        (Status.SUCCESS, old_keys.kid),
    ]
    for reply, reply_key, kid in (
        (replies[0], key_new, new_keys.kid),
        (replies[1], key_old, old_keys.kid),
    ):
        assert (
            check_reply(reply, reply_key=reply_key, recipients={AGENT_ID: kid})
            is ReplyCheck.ACCEPTED
        )


# -- expiry and leases -----------------------------------------------------------------------------


def test_an_unrenewed_agent_stops_the_margin_before_expiry() -> None:
    not_after = NOW + dt.timedelta(hours=2)
    assert renewal.expiry_stop_delay(not_after, now=NOW, margin_s=3600) == 3600
    assert renewal.expiry_stop_delay(not_after, now=NOW, margin_s=7200) == 0
    assert renewal.expiry_stop_delay(not_after, now=NOW + dt.timedelta(days=1), margin_s=0) == 0


def test_retry_after_is_whole_seconds_until_the_lease_expires() -> None:
    held = Held(holder="a", expires_at=NOW + dt.timedelta(seconds=12.2))
    assert held.retry_after_s(NOW) == 13
    assert held.retry_after_s(NOW + dt.timedelta(minutes=5)) == 1
