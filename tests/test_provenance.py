"""`collect_provenance`: versions, device, git state, host, time and checkpoint position."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from invlab.provenance import (
    checkpoint_position,
    collect_provenance,
    git_state,
    relative_path,
)
from tests.conftest import REPO


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    try:
        return Path(_git("rev-parse", "--show-toplevel").strip()).resolve() == REPO.resolve()
    except subprocess.CalledProcessError:
        return False


def test_keys_versions_device_and_time() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    prov = collect_provenance(device="cpu")
    after = datetime.now(UTC)
    expected = {
        "versions",
        "device",
        "device_name",
        "torch_threads",
        "git",
        "hostname",
        "timestamp",
        "checkpoint",
    }
    assert set(prov) == expected
    versions = prov["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["torch"] == importlib.metadata.version("torch")
    for name in ("torchvision", "lightning", "kornia", "timm", "wandb", "omegaconf", "invlab"):
        assert versions[name] == importlib.metadata.version(name), name
    assert prov["device"] == "cpu" and prov["device_name"] is None
    assert prov["torch_threads"] == torch.get_num_threads()
    assert prov["hostname"]
    stamp = datetime.fromisoformat(prov["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert before <= stamp <= after  # taken during the call (whole seconds)
    assert prov["checkpoint"] == {"path": None, "global_step": None, "epoch": None}
    json.dumps(prov, allow_nan=False)  # plain JSON


@pytest.mark.skipif(not _in_git_checkout(), reason="the source tree is not a git checkout")
def test_git_commit_is_the_checkout_head() -> None:
    state = collect_provenance()["git"]
    assert state == {
        "commit": _git("rev-parse", "HEAD").strip(),
        "dirty": bool(_git("status", "--porcelain").strip()),
    }
    assert len(state["commit"]) == 40


def test_no_git_information_is_none_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert git_state(tmp_path) is None  # not a repository
    if shutil.which("git") is not None:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        (tmp_path / "sub").mkdir()
        assert git_state(tmp_path / "sub") is None  # inside a repository, not its top level
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git executable at all
    assert git_state(REPO) is None
    assert collect_provenance()["git"] is None


def test_checkpoint_step_and_epoch_come_from_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "global_step": 17, "state_dict": {"net.w": torch.ones(2)}}, ckpt)
    assert checkpoint_position(ckpt) == (17, 3)

    prov = collect_provenance(checkpoint=ckpt, relative_to=tmp_path / "run")
    assert prov["checkpoint"] == {"path": "checkpoints/last.ckpt", "global_step": 17, "epoch": 3}
    absolute = collect_provenance(checkpoint=ckpt)["checkpoint"]
    assert absolute["path"] == str(ckpt) and absolute["global_step"] == 17
    # Values given explicitly win (a callback records the trainer's step before the file exists).
    given = collect_provenance(checkpoint=ckpt, global_step=20, epoch=4)["checkpoint"]
    assert (given["global_step"], given["epoch"]) == (20, 4)

    # Not a Lightning checkpoint, not a torch file, missing: no step, no error.
    torch.save({"net.w": torch.ones(2)}, tmp_path / "weights.pt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    for path in (tmp_path / "weights.pt", tmp_path / "junk.ckpt", tmp_path / "missing.ckpt"):
        assert checkpoint_position(path) == (None, None), path
    assert relative_path(tmp_path / "elsewhere.ckpt", tmp_path / "run") == str(
        tmp_path / "elsewhere.ckpt"
    )


def test_device_is_recorded_as_given() -> None:
    assert collect_provenance(device=torch.device("cpu"))["device"] == "cpu"
    assert collect_provenance()["device"] is None
