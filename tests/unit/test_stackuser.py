"""The stack user's folders: which ones a crashed run left behind, and whose they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infra import stackuser
from infra.server import StackError


def _folder(root: Path, name: str, owner: Path | None, *, durable: bool) -> Path:
    folder = root / name
    (folder / "postgres" / "data").mkdir(parents=True)
    if owner is not None:
        (folder / stackuser.OWNER_FILE).write_text(
            json.dumps({"state_dir": str(owner), "durable": durable})
        )
    return folder


def _state(tmp_path: Path, name: str, user_dir: Path | None) -> Path:
    state = tmp_path / name
    state.mkdir()
    (state / "layout.json").write_text(
        json.dumps({"port_base": 27100, "stack_user_dir": str(user_dir) if user_dir else None})
    )
    return state


def test_only_throwaway_folders_of_gone_state_folders_are_collected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    gone = tmp_path / "gone"  # a killed test run's state folder, deleted since
    crashed = _folder(root, "crashed", gone, durable=False)
    durable = _folder(root, "durable", gone, durable=True)  # may only have moved: kept
    unowned = _folder(root, "being-made", None, durable=False)  # owner.json not yet written
    live = _folder(root, "live", tmp_path / "live-state", durable=False)
    _state(tmp_path, "live-state", live)
    running = _folder(root, "running", gone, durable=False)
    (running / "postgres" / "data" / "postmaster.pid").write_text(f"{os.getpid()}\n")
    replaced = _folder(root, "replaced", tmp_path / "moved-on", durable=False)
    _state(tmp_path, "moved-on", root / "another")  # its state folder uses another one now

    assert sorted(stackuser.collect_orphans(root)) == [crashed, replaced]
    assert not crashed.exists() and not replaced.exists()
    assert durable.exists() and unowned.exists() and live.exists() and running.exists()


def test_remove_leaves_a_folder_that_another_state_folder_owns(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    folder = _folder(tmp_path / "root", "shared", theirs, durable=True)
    assert stackuser.remove(folder, mine) is False
    assert folder.exists()
    assert stackuser.remove(folder, theirs) is True
    assert not folder.exists()
    assert stackuser.remove(folder, theirs) is True  # already gone: nothing to do


def test_folder_names_say_whose_they_are(tmp_path: Path) -> None:
    root = Path("/var/lib/pta-stack")
    a = stackuser.choose(root, Path("/root/my pta/.stack"))
    b = stackuser.choose(root, Path("/root/my pta/.stack"))
    assert a.parent == root and a.name.startswith("my-pta-")
    assert a != b  # a fresh name each time: never another stack's stale data
    assert stackuser.choose(root, Path("/tmp/pta-test-x1")).name.startswith("pta-test-x1-")


def test_purge_never_deletes_a_folder_that_is_not_this_stacks(tmp_path: Path) -> None:
    # layout.json names the folder purge deletes: a folder without owner.json, or owned
    # by another stack, or not root's, is left alone whatever layout.json says.
    state = tmp_path / "state"
    victim = tmp_path / "victim"
    (victim / "precious").mkdir(parents=True)
    assert stackuser.remove(victim, state) is False
    assert (victim / "precious").exists()
    other = _folder(tmp_path / "root", "other", tmp_path / "other-state", durable=True)
    assert stackuser.remove(other, state) is False and other.exists()
    ours = _folder(tmp_path / "root", "ours", state, durable=True)
    if os.geteuid() == 0:
        assert stackuser.remove(ours, state) is True and not ours.exists()
    else:  # not root's: refused too
        assert stackuser.remove(ours, state) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="the check applies to root only")
def test_root_refuses_a_state_folder_another_user_controls(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    stackuser.check_state_dir_is_roots(state)  # root's, private: fine
    os.chown(state, 65534, 65534)
    with pytest.raises(StackError, match="belongs to uid 65534"):
        stackuser.check_state_dir_is_roots(state)
    os.chown(state, 0, 0)
    state.chmod(0o777)
    with pytest.raises(StackError, match="only root may"):
        stackuser.check_state_dir_is_roots(state)
    link = tmp_path / "link"
    link.symlink_to(state)
    with pytest.raises(StackError, match="not a link"):
        stackuser.check_state_dir_is_roots(link)
