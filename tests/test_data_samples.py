"""The embedded sample photos: materialised offline, atomically, once; split 6 train / 2 val / 4 test."""
import socket

import numpy as np
import pytest
from PIL import Image

from common.data import samples


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    patch = pytest.MonkeyPatch()
    patch.setenv("LIC_SAMPLES_DIR", str(root))

    def no_network(*args, **kwargs):
        raise AssertionError("the sample set must not touch the network")

    patch.setattr(socket.socket, "connect", no_network)
    try:
        train, test = samples.sample_dirs()
    finally:
        patch.undo()
    assert (train, test) == (root / "train", root / "test")
    return root


def test_split_and_content(sample_root):
    train, val, test = (sorted(p.stem for p in (sample_root / split).glob("*.png")) for split in samples.SPLITS)
    assert test == ["astronaut", "china", "coffee", "flower"]
    assert val == ["chelsea", "rocket"]
    assert train == ["grace_hopper", "hubble_deep_field", "immunohistochemistry", "motorcycle_left",
                     "motorcycle_right", "retina"]
    for path in sample_root.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 300, path
    import skimage.data
    assert np.array_equal(np.asarray(Image.open(sample_root / "test" / "astronaut.png")), skimage.data.astronaut())
    assert not list(sample_root.rglob("*.tmp"))


def test_a_cache_of_the_old_layout_loses_its_validation_photos_from_train(sample_root):
    # Before val/ existed, chelsea and rocket were training photos; such a cache must not train on them.
    stale = sample_root / "train" / "chelsea.png"
    stale.write_bytes((sample_root / "val" / "chelsea.png").read_bytes())
    assert samples.sample_splits(sample_root) == tuple(sample_root / split for split in samples.SPLITS)
    assert not stale.exists() and (sample_root / "val" / "chelsea.png").is_file()


def test_second_call_is_idempotent(sample_root, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for p in sample_root.rglob("*.png")}
    monkeypatch.setattr(samples, "SAMPLES", {name: None for name in samples.SAMPLES})  # loading would fail
    assert samples.sample_dirs(sample_root) == (sample_root / "train", sample_root / "test")
    assert {p: p.stat().st_mtime_ns for p in sample_root.rglob("*.png")} == stamps


def test_a_missing_file_is_rewritten(sample_root):
    (sample_root / "val" / "chelsea.png").unlink()
    samples.sample_dirs(sample_root)
    import skimage.data
    assert np.array_equal(np.asarray(Image.open(sample_root / "val" / "chelsea.png")), skimage.data.chelsea())


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("LIC_SAMPLES_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert samples.samples_root() == tmp_path / ".cache" / "lic-toolkit" / "samples"
