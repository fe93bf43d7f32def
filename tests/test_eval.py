"""common.eval against compressai's own eval_model code, by-hand bpp, decode/forward agreement, CLI errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.eval import DecodeMismatchWarning, centred_padding, crop, describe, evaluate, pad, write_results
from common.checkpoint import CHECKPOINT_FORMAT
from common.errors import UserError
from common.assembly import build_with_weights
from common.models import build

REPO = Path(__file__).resolve().parents[1]
# Sizes that are not multiples of 64 (padding matters) and at least 161 px (5-scale MS-SSIM exists).
SIZES = [(170, 200), (192, 161)]


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Photo-like 8-bit content: a colour gradient plus low-amplitude noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200 + 20
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def compressai_eval():
    """compressai's eval_model module; importing it sets 1 thread, which we undo for the other tests."""
    threads = torch.get_num_threads()
    from compressai.utils.eval_model import __main__ as module
    torch.set_num_threads(threads)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(_smooth_image(rng, h, w)).save(root / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A q1 bmshj2018 model, seeded, trained a few steps so that its latents and CDFs are not the init ones."""
    torch.manual_seed(0)
    model = build("bmshj2018-factorized", quality=1)
    from compressai.losses import RateDistortionLoss
    from compressai.optimizers import net_aux_optimizer
    opt = net_aux_optimizer(model, {"net": {"type": "Adam", "lr": 1e-3}, "aux": {"type": "Adam", "lr": 1e-3}})
    criterion = RateDistortionLoss(lmbda=0.01)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt["net"].zero_grad(), opt["aux"].zero_grad()
        criterion(model(x), x)["loss"].backward()
        model.aux_loss().backward()
        opt["net"].step(), opt["aux"].step()
    path = tmp_path_factory.mktemp("ckpt") / "q1.pt"
    torch.save(model.state_dict(), path)
    return path


def test_centred_padding_matches_compressai():
    from compressai.ops import compute_padding
    for h, w in [(170, 200), (64, 64), (1, 129), (512, 768), (300, 451)]:
        for multiple in (16, 64, 256):
            expected, _ = compute_padding(h, w, min_div=multiple)
            assert centred_padding(h, w, multiple) == expected
    x = torch.rand(1, 3, 17, 30)
    for mode in ("zero", "replicate"):
        padded = pad(x, centred_padding(17, 30, 16), mode)
        assert padded.shape[-2:] == (32, 32)
        assert torch.equal(crop(padded, centred_padding(17, 30, 16)), x)
    assert pad(x, (1, 1, 0, 0), "replicate")[..., 0].equal(x[..., 0])
    assert pad(x, (1, 1, 0, 0), "zero")[..., 0].abs().sum() == 0


def test_matches_compressai_eval_model(dataset, checkpoint, compressai_eval):
    ours_model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint))
    images = sorted(dataset.glob("*.png"))
    rows, agg = evaluate(ours_model, images)

    theirs_model = compressai_eval.load_checkpoint("bmshj2018-factorized", False, str(checkpoint))
    theirs_agg = compressai_eval.eval_model(theirs_model, "", dataset, images,
                                            architecture="bmshj2018-factorized", half=False, per_image=False)
    for row, path in zip(rows, images):
        theirs = compressai_eval.inference(theirs_model, compressai_eval.read_image(path))
        assert row["bpp"] == theirs["bpp"]
        assert row["psnr-rgb"] == pytest.approx(theirs["psnr-rgb"], abs=1e-4)
        assert row["ms-ssim-rgb"] == pytest.approx(theirs["ms-ssim-rgb"], abs=1e-6)
        # bpp by hand: payload bytes of compress() on the centred, zero-padded image over unpadded pixels.
        x = compressai_eval.read_image(path).unsqueeze(0)
        h, w = x.shape[-2:]
        strings = ours_model.compress(pad(x, centred_padding(h, w, 64)))["strings"]
        assert row["bytes"] == len(strings[0][0])
        assert row["bpp"] == len(strings[0][0]) * 8 / (h * w)
        # The decoded image is the eval-mode forward, bit for bit, and the likelihoods predict the bytes.
        assert row["forward_max_abs_diff"] == 0.0
        assert row["bpp_estimated"] == pytest.approx(row["bpp"], rel=0.02)
        assert row["ms-ssim-db-rgb"] == pytest.approx(-10 * math.log10(1 - row["ms-ssim-rgb"]))
    # The per-image values agree exactly (bpp) or to the metric's float32 noise (above); the means differ
    # only in summation: compressai averages in float32 (relative rounding 2^-24 ~ 6e-8 per addition, a few
    # additions here), ours in float64. PSNR keeps the per-image tolerance.
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
        assert agg[key] == pytest.approx(theirs_agg[key], abs=1e-4 if key == "psnr-rgb" else 0, rel=1e-6)
    assert agg["bpp"] == pytest.approx(sum(r["bpp"] for r in rows) / len(rows))


def test_entropy_estimation_matches_compressai_and_pads(dataset, checkpoint, compressai_eval, tmp_path):
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint)).eval()
    path = tmp_path / "aligned.png"
    Image.fromarray(_smooth_image(np.random.default_rng(3), 192, 256)).save(path)
    (row,), _ = evaluate(model, [path], entropy_estimation=True)
    theirs = compressai_eval.inference_entropy_estimation(model, compressai_eval.read_image(path))
    assert row["bpp"] == pytest.approx(theirs["bpp"], rel=1e-6)
    assert row["psnr-rgb"] == pytest.approx(theirs["psnr-rgb"], abs=1e-4)
    # An unaligned size crashes compressai's path; ours pads, so the estimate tracks the coded rate.
    (coded,), _ = evaluate(model, [dataset / "img0.png"])
    (estimated,), _ = evaluate(model, [dataset / "img0.png"], entropy_estimation=True)
    # The same forward of the same padded image in the same process: equal up to float64 summation noise.
    assert estimated["bpp"] == pytest.approx(coded["bpp_estimated"], rel=1e-9)
    assert estimated["psnr-rgb"] == pytest.approx(coded["psnr-rgb"], abs=1e-9)


def test_decode_mismatch_warns(dataset, checkpoint):
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint))
    decompress = model.decompress

    def shifted(strings, shape):
        out = decompress(strings, shape)
        return {"x_hat": (out["x_hat"] + 0.05).clamp(0, 1)}

    model.decompress = shifted
    with pytest.warns(DecodeMismatchWarning, match="DIFFERS FROM THE EVAL-MODE FORWARD"):
        (row,), _ = evaluate(model, [dataset / "img0.png"])
    assert row["forward_max_abs_diff"] == pytest.approx(0.05, abs=1e-3)


def test_small_image_uses_fewer_ms_ssim_scales(tmp_path, dataset, checkpoint):
    """Below 161 px pytorch-msssim (and so compressai's eval) asserts; we use common.losses' policy."""
    Image.fromarray(_smooth_image(np.random.default_rng(1), 40, 70)).save(tmp_path / "tiny.png")
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint))
    rows, agg = evaluate(model, [tmp_path / "tiny.png", dataset / "img0.png"])
    assert rows[0]["ms_ssim_scales"] == 2 and rows[1]["ms_ssim_scales"] == 5
    assert 0 < rows[0]["ms-ssim-rgb"] < 1 and rows[0]["bpp"] > 0
    assert agg["num_images_fewer_ms_ssim_scales"] == 1
    assert agg["ms-ssim-rgb"] == pytest.approx((rows[0]["ms-ssim-rgb"] + rows[1]["ms-ssim-rgb"]) / 2)
    assert "fewer than 5 scales on 1 image" in describe(False, "zero", 64, 64, 1)
    assert describe(False, "zero", 64, 64) == "Inference (ans)"


def test_restores_training_mode_and_psnr_by_hand(tmp_path, checkpoint):
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint)).train()
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.png")
    (row,), _ = evaluate(model, [tmp_path / "flat.png"])
    assert model.training
    decoded = model.eval().decompress(*model.compress(torch.full((1, 3, 64, 64), 128 / 255)).values())["x_hat"]
    mse = ((decoded * 255).clamp(0, 255).round() - 128).pow(2).mean().item()
    assert row["psnr-rgb"] == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-4)


def _run_cli(*args: str, env=None):
    return subprocess.run([sys.executable, "-m", "common.eval", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_writes_compressai_json_and_csv(dataset, checkpoint, tmp_path):
    from common.eval.__main__ import main
    out = tmp_path / "res" / "curve.json"
    assert main(["--model", "bmshj2018-factorized", "--checkpoint", str(checkpoint), str(checkpoint),
                 "--dataset", str(dataset), "--output", str(out), "--pad_mode", "replicate"]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"name", "description", "results"}
    assert "replicate" in doc["description"]
    results = doc["results"]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db-rgb", "encoding_time", "decoding_time"):
        assert len(results[key]) == 2
    assert results["bpp"][0] == results["bpp"][1]
    lines = out.with_suffix(".csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 2 * len(SIZES)
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint))
    _, agg = evaluate(model, sorted(dataset.glob("*.png")), pad_mode="replicate")
    assert results["bpp"][0] == pytest.approx(agg["bpp"])


def test_cli_names_that_are_not_utf8(tmp_path):
    import os

    from common.eval.__main__ import main

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [b"x\xff\xfe.png", b"plain.png"]
    for name in names:
        Image.fromarray(_smooth_image(rng, 48, 40)).save(os.path.join(os.fsencode(folder), name), format="PNG")
    weights = tmp_path / "tiny.pt"
    torch.save(build("bmshj2018-factorized-tiny").state_dict(), weights)
    out = tmp_path / "curve.json"
    assert main(["--model", "bmshj2018-factorized-tiny", "--checkpoint", str(weights), "--dataset", str(folder),
                 "--output", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["num_images"] == [2]
    rows = out.with_suffix(".csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(row.split(",")[1] for row in rows) == ["plain.png", "x\\xff\\xfe.png"]


@pytest.mark.parametrize("stale", [False, True], ids=["tables_of_the_model", "stale_tables"])
def test_cli_prints_real_against_estimated_bpp_and_warns_on_stale_tables(dataset, tmp_path, capsys, stale):
    """Tables built before the density moved code with the old density: the real bpp leaves the estimate."""
    import warnings as warnings_module

    from common.eval.__main__ import main
    torch.manual_seed(0)
    model = build("bmshj2018-factorized-tiny")
    model.update(force=True)
    if stale:
        with torch.no_grad():
            for bias in model.entropy_bottleneck.biases:
                bias += 1.5
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        assert main(["--model", "bmshj2018-factorized-tiny", "--checkpoint", str(weights), "--dataset", str(dataset),
                     "--output", str(tmp_path / "o.json"), "--no-update"]) == 0
    printed = capsys.readouterr().err
    assert all(f"  img{index}.png: bpp " in printed for index in range(len(SIZES)))
    gap_warnings = [str(w.message) for w in caught if "off the likelihood estimate" in str(w.message)]
    assert len(gap_warnings) == int(stale)
    if stale:
        assert "2 image(s)" in gap_warnings[0]


def test_quantiles_no_table_can_hold_are_a_one_line_error_not_a_hung_coder(dataset):
    """A diverged aux optimizer leaves quantiles far apart: their int32 table offsets overflow and rANS would loop."""
    torch.manual_seed(0)
    model = build("bmshj2018-factorized-tiny")
    with torch.no_grad():
        model.entropy_bottleneck.quantiles[:, :, 2] = 1e30
    model.update(force=True)
    with pytest.raises(UserError, match=r"^img0.png: the entropy bottleneck entropy_bottleneck has quantiles spanning "
                                        r"1e\+30 \(at most 65536 can be coded\)"):
        evaluate(model, sorted(dataset.glob("*.png")), update=False)


def test_cli_hpcm_official_bitstream_layout(dataset, tmp_path):
    """Both layouts code the same symbols with tables a few counts in 2^16 apart, and the coder writes 32-bit
    words: the same size to a word per image (equal sizes on these images, as on the official fixture)."""
    from common.eval.__main__ import main
    from common.models.hpcm.weights import fill_parity_weights
    weights = tmp_path / "tiny.pt"
    torch.save(fill_parity_weights(build("hpcm-tiny")).state_dict(), weights)
    docs = {}
    for layout in ("toolkit", "official"):
        out = tmp_path / f"{layout}.json"
        assert main(["--model", "hpcm-tiny", "--checkpoint", str(weights), "--dataset", str(dataset),
                     "--output", str(out), "--bitstream", layout]) == 0
        docs[layout] = json.loads(out.read_text())
    assert all(f"{layout} bitstream layout" in docs[layout]["codec"] for layout in docs)
    rows = {layout: (tmp_path / f"{layout}.csv").read_text() for layout in docs}
    assert rows["toolkit"] != rows["official"]
    bpp = {layout: docs[layout]["results"]["bpp"][0] for layout in docs}
    pixels = sum(h * w for h, w in SIZES)
    assert abs(bpp["toolkit"] - bpp["official"]) * pixels / 8 <= 4 * len(SIZES)
    assert docs["toolkit"]["results"]["psnr-rgb"] == docs["official"]["results"]["psnr-rgb"]


@pytest.mark.parametrize("case", ["missing_dataset", "missing_checkpoint", "truncated_checkpoint",
                                  "bad_quality", "quality_not_integer", "bitstream_not_hpcm"])
def test_cli_user_errors_are_one_line(case, dataset, checkpoint, tmp_path):
    args = {"--model": "bmshj2018-factorized", "--dataset": str(dataset), "--output": str(tmp_path / "o.json"),
            "--checkpoint": str(checkpoint)}
    expected = {"missing_dataset": "dataset folder not found", "missing_checkpoint": "checkpoint file not found",
                "truncated_checkpoint": "truncated", "bad_quality": "--quality must be an integer from 1 to 8",
                "quality_not_integer": "--quality must be an integer or a comma list",
                "bitstream_not_hpcm": "--bitstream applies to HPCM models"}[case]
    if case == "missing_dataset":
        args["--dataset"] = str(tmp_path / "nope")
    elif case == "missing_checkpoint":
        args["--checkpoint"] = str(tmp_path / "nope.pt")
    elif case == "bitstream_not_hpcm":
        args["--bitstream"] = "official"
    elif case == "truncated_checkpoint":
        broken = tmp_path / "broken.pt"
        broken.write_bytes(checkpoint.read_bytes()[:5000])
        args["--checkpoint"] = str(broken)
    else:
        del args["--checkpoint"]
        args["--quality"] = "9" if case == "bad_quality" else "one"
    flat = [item for pair in args.items() for item in pair]
    if "--checkpoint" not in args:
        flat.append("--pretrained")
    proc = _run_cli(*flat)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert expected in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_write_results_round_trips_through_rd(tmp_path):
    from common.rd import load_curve
    rows = [{"image": "a.png", "bpp": 0.5, "psnr-rgb": 30.0}]
    aggs = [{"bpp": 0.5, "psnr-rgb": 30.0, "ms-ssim-rgb": 0.9}, {"bpp": 0.8, "psnr-rgb": 32.0, "ms-ssim-rgb": 0.95}]
    json_path, csv_path = write_results(tmp_path / "c.json", "ours", "Inference (ans)", ["a", "b"], aggs,
                                        [rows, rows])
    curve = load_curve(json_path)
    assert curve.bpp == [0.5, 0.8] and curve.values("psnr-rgb") == [30.0, 32.0]
    assert curve.values("ms-ssim-db-rgb")[1] == pytest.approx(-10 * math.log10(0.05))
    assert csv_path.read_text().splitlines()[0] == "point,image,bpp,psnr-rgb"


def test_codec_speed_benchmark_runs(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("codec_speed", REPO / "benchmarks" / "codec_speed.py")
    codec_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codec_speed)
    assert codec_speed.parse_size("768x512") == (768, 512)
    with pytest.raises(Exception, match="multiples of 64"):
        codec_speed.parse_size("100x64")
    assert codec_speed.main(["--sizes", "64x128", "--repeats", "1"]) == 0
    table_row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    forward, compress, decompress, ratio = (float(v) for v in table_row[2:6])
    assert min(forward, compress, decompress) > 0 and ratio == pytest.approx(compress / forward, abs=0.02)


def test_pretrained_weights_missing_is_a_user_error(dataset, tmp_path, monkeypatch):
    from common.eval.__main__ import main
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(UserError, match="pretrained weights not found: put bmshj2018-factorized-prior-2-"):
        main(["--model", "bmshj2018-factorized", "--pretrained", "--quality", "2", "--dataset", str(dataset),
              "--output", str(tmp_path / "o.json")])
    with pytest.raises(UserError, match="--pretrained is available for bmshj2018-factorized, mbt2018-mean only"):
        main(["--model", "hpcm-tiny", "--pretrained", "--dataset", str(dataset), "--output", str(tmp_path / "o.json")])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            main(["--model", "bmshj2018-factorized", "--pretrained", "--device", "cuda", "--dataset",
                  str(dataset), "--output", str(tmp_path / "o.json")])
    with pytest.raises(UserError, match="a list of qualities needs --pretrained"):
        main(["--model", "bmshj2018-factorized", "--checkpoint", "x.pt", "--quality", "1,2", "--dataset",
              str(dataset), "--output", str(tmp_path / "o.json")])


def test_pretrained_from_local_cache(dataset, checkpoint, tmp_path, monkeypatch):
    """--pretrained reads compressai's cache file name and keeps its CDF tables (no update), like eval_model."""
    from common.eval.__main__ import main
    from common.models.bmshj2018 import pretrained_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = build_with_weights("bmshj2018-factorized", checkpoint=str(checkpoint))
    model.update(force=True)
    target = pretrained_path(1)
    target.parent.mkdir(parents=True)
    torch.save(model.state_dict(), target)
    out = tmp_path / "pre.json"
    assert main(["--model", "bmshj2018-factorized", "--pretrained", "--quality", "1", "--dataset", str(dataset),
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["name"] == "bmshj2018-factorized-mse" and doc["points"] == ["q1"]
    _, agg = evaluate(model, sorted(dataset.glob("*.png")), update=False)
    assert doc["results"]["bpp"] == [agg["bpp"]]
    assert doc["results"]["psnr-rgb"] == [agg["psnr-rgb"]]


def test_training_checkpoint_with_replaced_layers(dataset, tmp_path):
    """A lic-toolkit/1 checkpoint of a GDN->ReLU model is rebuilt by common.assembly and evaluated."""
    from common.eval.__main__ import main
    from common.replace import apply_config, make_config
    torch.manual_seed(0)
    config = make_config("all", "relu")
    model = apply_config(build("bmshj2018-factorized", quality=1), config)
    path = tmp_path / "last.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {"name": "bmshj2018-factorized", "kwargs": {"quality": 1}},
                "replace": config, "qat": None, "state_dict": model.state_dict(), "step": 3, "epoch": 0}, path)
    out = tmp_path / "relu.json"
    assert main(["--model", "bmshj2018-factorized", "--checkpoint", str(path), "--dataset", str(dataset),
                 "--output", str(out)]) == 0
    _, agg = evaluate(model, sorted(dataset.glob("*.png")))
    results = json.loads(out.read_text())["results"]
    assert results["bpp"] == [agg["bpp"]] and results["forward_max_abs_diff"] == [0.0]
