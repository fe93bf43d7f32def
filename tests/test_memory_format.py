"""--memory_format: a model in channels_last computes what it computes in NCHW, decodes its own streams exactly,
and the engine and the evaluation CLI put models in the format asked for."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from common.eval.__main__ import main as eval_main
from common.losses import RateDistortionLoss
from common.models import build
from common.models.hpcm.weights import fill_parity_weights
from common.models.memory_format import resolve
from common.train.engine import Trainer
from common.train.options import parse_config
from tests.helpers import write_image_dirs

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    return write_image_dirs(tmp_path_factory.mktemp("images"), size=64, n_train=4, n_test=1)


def _is_channels_last(model: torch.nn.Module) -> bool:
    convs = [p for p in model.parameters() if p.dim() == 4]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_auto_is_what_the_model_declares_for_the_cpu():
    hpcm, tiny = build("hpcm-base"), build("hpcm-tiny")
    assert resolve("auto", CPU, hpcm) == torch.channels_last
    assert resolve("auto", CUDA, hpcm) == torch.contiguous_format  # a CUDA device object needs no GPU
    assert resolve("auto", CPU, tiny) == torch.contiguous_format  # declares nothing: PyTorch's default
    assert resolve("contiguous", CPU, hpcm) == torch.contiguous_format
    assert resolve("channels_last", CUDA, tiny) == torch.channels_last
    with pytest.raises(ValueError, match="memory format must be one of"):
        resolve("nhwc", CPU)


@pytest.mark.parametrize("name, size", [("bmshj2018-factorized-tiny", 64), ("hpcm-tiny", 128)])
def test_channels_last_computes_what_nchw_does_and_decodes_its_own_streams(name, size):
    torch.manual_seed(0)
    nchw = build(name)
    if name.startswith("hpcm"):
        fill_parity_weights(nchw)  # HPCM's default initialisation codes to almost nothing
    nchw.eval().update(force=True)
    last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    assert _is_channels_last(last) and not _is_channels_last(nchw)
    x = torch.rand(1, 3, size, size)
    out = {"nchw": nchw(x), "last": last(x)}
    assert out["last"]["x_hat"].is_contiguous(memory_format=torch.channels_last)
    # Only the order of each convolution's float32 sums differs: at most K = 9 * 192 products per output,
    # whose reordering moves a value by about sqrt(K) * 2^-24 ~ 2e-6 of its size; through the dozen or so
    # convolutions in a row this stays well inside 1e-4 of values of order one.
    torch.testing.assert_close(out["last"]["x_hat"], out["nchw"]["x_hat"], rtol=1e-4, atol=1e-4)
    for key, likelihoods in out["nchw"]["likelihoods"].items():
        torch.testing.assert_close(out["last"]["likelihoods"][key], likelihoods, rtol=1e-4, atol=1e-6)
    # Training: the same seed draws the same quantisation noise in either layout, so the rate-distortion
    # losses and their gradients agree too (backward in channels_last).
    losses, grads = {}, {}
    for label, model in (("nchw", nchw), ("last", last)):
        model.train().zero_grad(set_to_none=True)
        torch.manual_seed(1)
        losses[label] = RateDistortionLoss(lmbda=0.0067)(model(x), x)["loss"]
        losses[label].backward()
        grads[label] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.eval()
    torch.testing.assert_close(losses["last"], losses["nchw"], rtol=1e-4, atol=0)
    assert len(grads["last"]) == len(grads["nchw"]) > 0
    for got, expected in zip(grads["last"], grads["nchw"]):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)
    # Encoder and decoder run the same arithmetic in one format, so the decoding is the eval forward exactly.
    with torch.no_grad():
        encoded = last.compress(x)
        decoded = last.decompress(encoded["strings"], encoded["shape"])["x_hat"]
        assert torch.equal(decoded, last(x)["x_hat"].clamp(0, 1))


def _train(image_dirs, save_dir, model, *extra) -> Trainer:
    train, test = image_dirs
    trainer = Trainer(parse_config([
        "--model", model, "--train_dataset", str(train), "--test_dataset", str(test), "--patch_size", "64",
        "--batch_size", "2", "--steps", "2", "--lr", "1e-3", "--save_dir", str(save_dir), "--recon_every", "0",
        "--progress", "false", "--num_workers", "0", "--ema_decay", "0.9", *extra]))
    trainer.fit()
    return trainer


@pytest.mark.parametrize("model, flag, channels_last", [
    ("hpcm-tiny", None, False), ("hpcm-tiny", "channels_last", True),
    ("bmshj2018-factorized-tiny", "channels_last", True), ("bmshj2018-factorized-tiny", "contiguous", False)])
def test_the_engine_trains_in_the_format_asked_for(image_dirs, tmp_path, model, flag, channels_last):
    trainer = _train(image_dirs, tmp_path, model, *(("--memory_format", flag) if flag else ()))
    assert _is_channels_last(trainer.model) == channels_last  # the weight average included: it is the model
    assert trainer.cfg.schedule.memory_format == (flag or "auto")
    # The checkpoint holds ordinary tensors: it loads into a model built in the default layout.
    state = torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"]
    build(model).load_state_dict(state)


def test_eval_cli_gives_the_same_results_in_both_formats(image_dirs, tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save(build("bmshj2018-factorized-tiny").state_dict(), weights)
    results = {}
    for fmt in ("channels_last", "contiguous"):
        out = tmp_path / f"{fmt}.json"
        assert eval_main(["--model", "bmshj2018-factorized-tiny", "--checkpoint", str(weights), "--dataset",
                          str(image_dirs[1]), "--output", str(out), "--memory_format", fmt]) == 0
        results[fmt] = json.loads(out.read_text())["results"]
    # A factorized prior's tables do not depend on the layout; the symbols could differ only where a latent
    # lies within float32 rounding of a rounding boundary, so the sizes agree to a 32-bit word.
    assert abs(results["channels_last"]["bpp"][0] - results["contiguous"]["bpp"][0]) * 64 * 64 / 8 <= 4
    assert results["channels_last"]["psnr-rgb"][0] == pytest.approx(results["contiguous"]["psnr-rgb"][0], abs=1e-3)


def test_memory_format_benchmark_prints_both_layouts(capsys):
    from benchmarks.memory_format import main

    assert main(["--models", "bmshj2018-factorized-tiny", "--batch", "1", "--size", "64", "--repeats", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| bmshj")]
    assert [row[1].split(":")[1].split(",")[0].strip() for row in rows] == ["training step", "eval forward"]
    for row in rows:
        assert all(float(cell) > 0 for cell in row[2:5])
