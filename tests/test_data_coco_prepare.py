"""python -m common.data.coco_prepare: layout, crops, hash split, resume, atomic writes, bad inputs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import common.data as data
from common.data import coco_prepare, datasets
from common.train.config import DataConfig
from common.errors import UserError

SIZE = 32


def rgb(height, width, seed):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


@pytest.fixture
def coco(tmp_path) -> Path:
    """train2017: 24 PNGs named like Kodak (known hash fractions), one 20x24 image, one corrupt file;
    val2017: 3 images."""
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    for i in range(1, 25):
        Image.fromarray(rgb(40 + i, 50, i)).save(root / "train2017" / f"kodim{i:02d}.png")
    Image.fromarray(rgb(20, 24, 99)).save(root / "train2017" / "small.png")
    (root / "train2017" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    for i in range(3):
        Image.fromarray(rgb(60, 40, 100 + i)).save(root / "val2017" / f"v{i}.png")
    return root


def run(coco_dir, out_dir, *extra):
    return coco_prepare.main(["--coco_dir", str(coco_dir), "--out_dir", str(out_dir), "--size", str(SIZE), *extra])


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_layout_crops_split_and_corrupt_file(coco, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(coco, out, "--include_val", "true", "--val_ratio", "0.1", "--workers", "2") == 0
    train = sorted(p.name for p in (out / "train").iterdir())
    val = sorted(p.name for p in (out / "val").iterdir())
    # kodim08/13/17/21 fall below 0.1 (see test_data.test_hash_split_membership_by_hand).
    assert val == ["kodim08.png", "kodim13.png", "kodim17.png", "kodim21.png", "v0.png", "v1.png", "v2.png"]
    assert len(train) == 21 and "small.png" in train and "corrupt.png" not in train
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "skipped 1 unreadable image(s)" in err

    source = pixels(coco / "train2017" / "kodim05.png")  # 45x50: centre crop at (6, 9)
    assert np.array_equal(pixels(out / "train" / "kodim05.png"), source[6:38, 9:41])
    small = pixels(coco / "train2017" / "small.png")  # 20x24 -> reflect-padded 6+6 / 4+4
    expected = np.pad(small, ((6, 6), (4, 4), (0, 0)), mode="reflect")
    assert np.array_equal(pixels(out / "train" / "small.png"), expected)
    assert all(Image.open(p).size == (SIZE, SIZE) for p in (out / "val").iterdir())


def test_prepared_folder_trains_with_use_prepared(coco, tmp_path):
    out = tmp_path / "out"
    run(coco, out, "--val_ratio", "0.1", "--workers", "1")
    args = DataConfig(coco_dir=str(out), use_prepared=True, patch_size=SIZE)
    train, val = data.build_datasets(args)
    assert (len(train), len(val)) == (21, 4)


def test_resume_skips_finished_files_and_cleans_temporaries(coco, tmp_path, capsys):
    out = tmp_path / "out"
    run(coco, out, "--workers", "1")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    (out / "train" / "kodim03.png").unlink()
    stale = out / "train" / f"kodim04.png{coco_prepare.TEMP_MARK}12345"
    stale.write_bytes(b"half a png")
    capsys.readouterr()
    run(coco, out, "--workers", "1")
    assert "24 already done, 2 to crop" in capsys.readouterr().out  # kodim03 + the corrupt file
    assert not stale.exists()
    for path, stamp in stamps.items():
        if path.name != "kodim03.png":
            assert path.stat().st_mtime_ns == stamp
    assert (out / "train" / "kodim03.png").exists()
    assert run(coco, out, "--workers", "1") == 0  # only the corrupt file is left: still a success


def test_interrupted_run_leaves_only_complete_files(coco, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_replace, calls = os.replace, []

    def replace_then_stop(src, dst):
        calls.append(dst)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(coco_prepare.os, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(coco, out, "--workers", "1")
    monkeypatch.setattr(coco_prepare.os, "replace", real_replace)
    written = list((out / "train").iterdir())
    assert len(written) == 4  # manifest + 4 crops renamed, the 5th crop interrupted before its rename
    assert all(p.suffix == ".png" and Image.open(p).size == (SIZE, SIZE) for p in written)
    run(coco, out, "--workers", "1")
    assert len(list((out / "train").iterdir())) == 25


def test_strict_stops_at_the_corrupt_file(coco, tmp_path):
    with pytest.raises(UserError, match="corrupt.jpg") as info:
        run(coco, tmp_path / "out", "--workers", "1", "--strict", "true")
    assert "\n" not in str(info.value)


def test_max_images_and_setting_changes(coco, tmp_path):
    out = tmp_path / "out"
    run(coco, out, "--workers", "1", "--max_images", "5")
    train_root = coco / "train2017"
    chosen = datasets.hash_subset(sorted(p for p in train_root.iterdir()), train_root, 5)
    expected = {p.stem for p in chosen if p.name != "corrupt.jpg"}
    assert {p.stem for p in (out / "train").iterdir()} == expected
    with pytest.raises(UserError, match="size=32"):
        coco_prepare.main(["--coco_dir", str(coco), "--out_dir", str(out), "--size", "48"])
    with pytest.raises(UserError, match="val_ratio"):
        run(coco, out, "--val_ratio", "0.2")


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="not found"):
        run(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserError, match="no train2017/"):
        run(tmp_path / "flat", tmp_path / "out")
    (tmp_path / "flat" / "train2017").mkdir()
    with pytest.raises(UserError, match="no images"):
        run(tmp_path / "flat", tmp_path / "out")
    Image.fromarray(rgb(8, 8, 0)).save(tmp_path / "flat" / "train2017" / "a.png")
    with pytest.raises(UserError, match="no val2017/"):
        run(tmp_path / "flat", tmp_path / "out", "--include_val", "true")
    with pytest.raises(SystemExit):  # argparse: "argument --val_ratio: must be a finite number >= 0 and < 1"
        run(tmp_path / "flat", tmp_path / "out", "--val_ratio", "1.0")


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "common.data.coco_prepare", "--coco_dir", str(tmp_path / "no"),
                             "--out_dir", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr


def test_a_file_given_as_coco_dir_is_named_as_such(tmp_path):
    # It said "--coco_dir folder not found" for a file that exists (the bad-input sweep's case).
    (tmp_path / "coco.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="--coco_dir is not a folder: .*coco.zip"):
        run(tmp_path / "coco.zip", tmp_path / "out")
