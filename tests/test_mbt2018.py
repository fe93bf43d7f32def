"""mbt2018-mean (the Balanced R-D paper's base model) in our registry: real bitstreams equal the eval forward,
quality and size come from a state dict, and it trains with Balanced R-D."""
from __future__ import annotations

import torch

import common.models as models
from common.assembly import load_model
from common.data import load_rgb_tensor
from common.data.images import list_images
from common.data.samples import sample_dirs
from common.train.engine import Trainer
from common.train.options import parse_config
from tests.test_engine import image_dirs  # noqa: F401 - module fixture


def photo_crop(size: int = 128) -> torch.Tensor:
    image = load_rgb_tensor(list_images(sample_dirs()[1])[0]).unsqueeze(0)
    return image[..., :size, :size]


def test_compress_decompress_equals_the_eval_forward_on_a_photo():
    torch.manual_seed(0)
    model = models.build("mbt2018-mean", quality=1).eval()
    model.update(force=True)
    x = photo_crop()
    with torch.no_grad():
        expected = model(x)["x_hat"].clamp(0, 1)
        coded = model.compress(x)
        decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    # The same rounding around the same means in both paths: identical on one machine.
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    assert sum(len(s[0]) for s in coded["strings"]) > 0


def test_quality_and_size_come_from_the_state_dict(tmp_path):
    state = models.build("mbt2018-mean", quality=6).state_dict()
    assert models.entry("mbt2018-mean").quality_of(state) == 5  # 5-8 share (N, M) = (192, 320)
    torch.save(state, tmp_path / "raw.pt")
    loaded = load_model("mbt2018-mean", checkpoint=str(tmp_path / "raw.pt"))
    assert (loaded.N, loaded.M, loaded.forward_multiple) == (192, 320, 64)


def test_it_trains_with_balanced(image_dirs, tmp_path):  # noqa: F811
    train, test = image_dirs
    trainer = Trainer(parse_config(["--model", "mbt2018-mean", "--quality", "1", "--use_balanced",
                                    "--train_dataset", str(train), "--test_dataset", str(test), "--patch_size", "64",
                                    "--batch_size", "2", "--steps", "2", "--save_dir", str(tmp_path),
                                    "--progress", "false", "--num_workers", "0", "--recon_every", "0"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("g_a") for n in moved) and any(n.startswith("h_s") for n in moved)
    assert set(trainer.optimizer.task_weight_dict()) >= {"weight_distortion", "weight_rate"}
