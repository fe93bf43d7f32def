"""JPEG/WebP anchors: bytes, bpp and PSNR checked against an independent numpy computation."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from baselines import classic
from common.errors import UserError
from tests.helpers import smooth_image


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "set"
    folder.mkdir()
    for index, size in enumerate((48, 200)):
        Image.fromarray(smooth_image(rng, size)).save(folder / f"im{index}.png")
    return folder


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_rows_match_an_independent_computation(images, codec):
    paths = sorted(images.glob("*.png"))
    labels, aggregates, rows = classic.evaluate_codec(codec, [10, 60], paths, images)
    assert labels == ["quality=10", "quality=60"]
    for quality, point_rows, aggregate in zip((10, 60), rows, aggregates):
        for path, row in zip(paths, point_rows):
            original = Image.open(path).convert("RGB")
            buffer = io.BytesIO()
            original.save(buffer, format=classic.CODECS[codec][0], quality=quality)
            decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float64)
            mse = np.mean((np.asarray(original, dtype=np.float64) - decoded) ** 2)
            assert row["bytes"] == buffer.tell()
            assert row["bpp"] == buffer.tell() * 8 / (original.width * original.height)
            # Ours averages the squared error in float32: a relative error of a few 1e-7 in the MSE is
            # 10*log10(1 + 1e-6) ~ 5e-6 dB.
            assert row["psnr-rgb"] == pytest.approx(10 * math.log10(255.0 ** 2 / mse), abs=1e-4)
            assert 0 < row["ms-ssim-rgb"] <= 1
        assert aggregate["bpp"] == pytest.approx(np.mean([r["bpp"] for r in point_rows]), rel=1e-12)
        assert aggregate["quality"] == quality and "bpp_estimated" not in aggregate
    assert aggregates[1]["bpp"] > aggregates[0]["bpp"] and aggregates[1]["psnr-rgb"] > aggregates[0]["psnr-rgb"]


def test_cli_writes_curves_with_test_set_and_codec(images, tmp_path):
    classic.main(["--dataset", str(images), "--out_dir", str(tmp_path / "out"), "--qualities", "20,5",
                  "--test_set", "my-photos"])
    for codec, name in (("jpeg", "JPEG"), ("webp", "WebP")):
        document = json.loads((tmp_path / "out" / f"{codec}.json").read_text())
        assert document["name"] == name and document["points"] == ["quality=5", "quality=20"]
        assert document["test_set"] == {"name": "my-photos", "split": None, "num_images": 2}
        assert document["codec"].startswith("Pillow ")
        assert (tmp_path / "out" / f"{codec}.csv").read_text().count("\n") == 1 + 2 * 2


@pytest.mark.parametrize("flag,value,message", [("--codecs", "jpeg,avif", "--codecs must name"),
                                                ("--qualities", "0,50", "--qualities must lie in 1..100"),
                                                ("--qualities", "a", "comma-separated integers")])
def test_cli_rejects_bad_values(images, tmp_path, flag, value, message):
    with pytest.raises(UserError, match=message):
        classic.main(["--dataset", str(images), "--out_dir", str(tmp_path), flag, value])
