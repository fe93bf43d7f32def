"""Checkpoint files: atomic writes, safe loading, one-line errors, state-dict extraction."""
from __future__ import annotations

import pytest
import torch

from common.checkpoint import atomic_save, extract_state_dict, load_file, load_state_dict
from common.errors import UserError


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(2)}, path)

    def interrupted(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(UserError, match="cannot write .*last.pt: disk full"):
        atomic_save({"w": torch.zeros(2)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


class Arbitrary:
    """A class that safe loading must refuse to build (any class could run code when unpickled)."""

    def __init__(self, value):
        self.value = value


def test_unsafe_objects_need_the_trust_flag(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"w": torch.ones(1), "extra": Arbitrary(7)}, path)
    with pytest.raises(UserError, match="--trust_checkpoint"):
        load_file(path)
    assert load_file(path, trust=True)["extra"].value == 7


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated"])
def test_missing_or_broken_files_are_user_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_state_dict_is_found_inside_training_checkpoints(tmp_path):
    weights = {"module.conv.weight": torch.ones(1)}
    assert list(extract_state_dict({"state_dict": weights, "epoch": 3})) == ["conv.weight"]
    path = tmp_path / "ck.pt"
    torch.save({"network": {"a": torch.zeros(1)}}, path)
    assert list(load_state_dict(path)) == ["a"]
    with pytest.raises(UserError, match="does not contain a model state dict"):
        extract_state_dict({"epoch": 3})
