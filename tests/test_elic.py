"""ELIC (elic2022-official, the Balanced R-D paper's main model) in our registry: real bitstreams decode to the
eval forward's image bit for bit (compressai's own coding path need not), its size comes from a state dict, and
it trains with Balanced R-D."""
from __future__ import annotations

import pytest
import torch

import common.models as models
from common.assembly import load_model
from common.eval import evaluate
from common.train.engine import Trainer
from common.train.options import parse_config
from tests.test_engine import image_dirs  # noqa: F401 - module fixture
from tests.test_mbt2018 import photo_crop


def coded(model, x):
    with torch.no_grad():
        expected = model(x)["x_hat"].clamp(0, 1)
        stream = model.compress(x)
        decoded = model.decompress(stream["strings"], stream["shape"])["x_hat"]
    return expected, decoded, stream


@pytest.mark.parametrize("size", [64, 128])
def test_compress_decompress_equals_the_eval_forward_on_a_photo(size):
    torch.manual_seed(0)
    model = models.build("elic2022-official", n=64).eval()
    model.update(force=True)
    expected, decoded, stream = coded(model, photo_crop(size))
    # The decoder repeats the forward's operations on the same tensors: identical, not merely close.
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    assert len(stream["strings"]) == 2 * 5 + 1  # anchors and non-anchors of 5 channel groups, then z


def test_it_trains_with_balanced_and_its_trained_weights_decode_exactly(image_dirs, tmp_path):  # noqa: F811
    train, test = image_dirs
    trainer = Trainer(parse_config(["--model", "elic2022-official", "--use_balanced", "--train_dataset", str(train),
                                    "--test_dataset", str(test), "--patch_size", "64", "--batch_size", "2",
                                    "--steps", "3", "--lr", "1e-3", "--save_dir", str(tmp_path), "--progress",
                                    "false", "--num_workers", "0", "--recon_every", "0"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("g_a") for n in moved) and any("latent_codec.y" in n for n in moved)
    assert set(trainer.optimizer.task_weight_dict()) >= {"weight_distortion", "weight_rate"}
    model = load_model(checkpoint=str(tmp_path / "last.pt"))
    assert type(model).__name__ == "ELIC" and model.g_a[0].weight.shape[0] == 192
    # Real-bitstream evaluation records the largest difference between decode and eval forward.
    rows, _ = evaluate(model, sorted(test.glob("*.png")))
    assert all(row["forward_max_abs_diff"] == 0 for row in rows)


def test_size_comes_from_the_state_dict(tmp_path):
    torch.save(models.build("elic2022-official", n=64).state_dict(), tmp_path / "raw.pt")
    loaded = load_model("elic2022-official", checkpoint=str(tmp_path / "raw.pt"))
    assert (loaded.g_a[0].weight.shape[0], loaded.forward_multiple) == (64, 64)
