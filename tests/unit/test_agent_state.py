"""The agent's state folder (agent.state): save, load, refuse, remove.

Local files only, in pytest's tmp_path. ``issue`` and ``saved_registration``
(tests.support.agent_state) build a real registration (PTA CA, agent key, signed
certificate).
"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest

from agent import state
from common import pki
from tests.support.agent_state import (
    issue,
    record_for,
    saved_registration,
)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "agent"
    issued = issue()
    saved = saved_registration(folder, issued)
    loaded = state.load(folder)
    assert loaded.record == saved.record == record_for(issued)
    assert loaded.certificate == issued.certificate
    assert loaded.kid == pki.spki_sha256_kid(issued.key.public_key())
    assert loaded.not_after == issued.certificate.not_valid_after_utc
    assert sorted(p.name for p in folder.iterdir()) == sorted(state.STATE_FILES)
    assert (folder / "ca-bundle.pem").read_bytes() == issued.service_ca_pem


def test_private_key_is_mode_0600_and_folder_0700(tmp_path: Path) -> None:
    folder = tmp_path / "agent"
    saved_registration(folder)
    assert stat.S_IMODE((folder / "agent.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_agent_json_holds_the_contract_fields(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    document = json.loads((tmp_path / "agent.json").read_text())
    assert set(document) == {
        "agent_id", "tenant_id", "ca_url", "host", "version", "registered_at",
    }  # fmt: skip


def test_record_is_frozen(tmp_path: Path) -> None:
    record = saved_registration(tmp_path).record
    with pytest.raises(ValueError, match="frozen"):
        record.host = "other"


def test_refuses_to_register_over_a_registration(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    with pytest.raises(state.AlreadyRegistered) as caught:
        saved_registration(tmp_path)
    message = str(caught.value)
    assert "pta-agent unregister" in message and "--force" in message
    assert "agent.json" in message


def test_refuses_leftovers_of_an_interrupted_registration(tmp_path: Path) -> None:
    pki.write_private_key(tmp_path / "agent.key", pki.new_rsa_key())
    with pytest.raises(state.AlreadyRegistered, match=r"agent\.key"):
        state.ensure_can_register(tmp_path, force=False)
    state.ensure_can_register(tmp_path, force=True)


def test_force_replaces_the_registration(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    second = issue()
    state.save(
        tmp_path,
        record=record_for(second),
        key=second.key,
        certificate=second.certificate,
        pta_ca=[second.pta_ca],
        ca_bundle_pem=second.service_ca_pem,
        force=True,
    )
    loaded = state.load(tmp_path)
    assert loaded.record.agent_id == second.agent_id
    assert loaded.kid == pki.spki_sha256_kid(second.key.public_key())
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o600


def test_empty_folder_is_not_registered(tmp_path: Path) -> None:
    with pytest.raises(state.NotRegistered, match="pta-agent register"):
        state.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "agent.json"),
        ('{"agent_id": "x"}', "tenant_id"),
        ("[]", "agent.json"),
    ],
)
def test_damaged_agent_json_names_the_file(tmp_path: Path, content: str, named: str) -> None:
    saved_registration(tmp_path)
    (tmp_path / "agent.json").write_text(content)
    with pytest.raises(state.StateCorrupt) as caught:
        state.load(tmp_path)
    assert str(tmp_path / "agent.json") in str(caught.value)
    assert named in str(caught.value)
    assert "--force" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent_id", "NOT-A-UUID"),
        ("tenant_id", str(uuid.uuid4()).upper()),
        ("ca_url", "http://ca.test"),
        ("registered_at", "2025-01-01T00:00:00"),  # naive: refused
        ("unexpected", 1),
    ],
)
def test_agent_json_is_validated(tmp_path: Path, field: str, value: object) -> None:
    saved_registration(tmp_path)
    document = json.loads((tmp_path / "agent.json").read_text())
    document[field] = value
    (tmp_path / "agent.json").write_text(json.dumps(document))
    with pytest.raises(state.StateCorrupt, match=field):
        state.load(tmp_path)


def test_agent_json_values_are_not_echoed(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    document = json.loads((tmp_path / "agent.json").read_text())
    document["host"] = {"secret-looking": "marker-0042"}
    (tmp_path / "agent.json").write_text(json.dumps(document))
    with pytest.raises(state.StateCorrupt) as caught:
        state.load(tmp_path)
    assert "marker-0042" not in str(caught.value)


@pytest.mark.parametrize("name", ["agent.key", "agent.crt", "pta-ca.pem", "ca-bundle.pem"])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    saved_registration(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(state.StateCorrupt, match=name):
        state.load(tmp_path)


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    (tmp_path / "agent.key").chmod(0o644)
    with pytest.raises(state.KeyExposed, match="chmod 600"):
        state.load(tmp_path)


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    other = issue()
    (tmp_path / "agent.crt").write_bytes(pki.certificate_pem(other.certificate))
    with pytest.raises(state.StateCorrupt, match="does not belong"):
        state.load(tmp_path)


def test_certificate_of_another_agent_is_refused(tmp_path: Path) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    document = json.loads((tmp_path / "agent.json").read_text())
    document["agent_id"] = str(uuid.uuid4())
    (tmp_path / "agent.json").write_text(json.dumps(document))
    with pytest.raises(state.StateCorrupt, match="is for agent"):
        state.load(tmp_path)


def test_remove_deletes_every_state_file(tmp_path: Path) -> None:
    saved_registration(tmp_path)
    (tmp_path / "unrelated.txt").write_text("kept")
    removed = state.remove(tmp_path)
    assert sorted(p.name for p in removed) == sorted(state.STATE_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["unrelated.txt"]
    with pytest.raises(state.NotRegistered):
        state.load(tmp_path)


def test_contexts_are_built_from_the_pinned_files(tmp_path: Path) -> None:
    loaded = saved_registration(tmp_path)
    assert loaded.server_tls().get_ca_certs()
    assert loaded.mutual_tls().get_ca_certs()
