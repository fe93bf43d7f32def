"""Seed 001 recipe: distil an Upsample+Conv decoder student from its teacher, then fine-tune against the images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.checkpoint import load_file
from common.train.engine import Trainer
from common.train.options import parse_config
from tests.helpers import write_image_dirs


def flags(train, test, save_dir, *extra):
    return parse_config([
        "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
        "--patch_size", "32", "--batch_size", "2", "--save_dir", str(save_dir), "--recon_count", "1",
        "--progress", "false", "--num_workers", "0", *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    train, test = write_image_dirs(root, size=48, n_train=4, n_test=1)
    Trainer(flags(train, test, root / "teacher", "--steps", "20", "--lr", "3e-3", "--recon_every", "0")).fit()
    return root, train, test


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_distill_then_finetune(teacher):
    root, train, test = teacher
    distill_dir, ft_dir = root / "distill", root / "ft"
    trainer = Trainer(flags(train, test, distill_dir, "--distill", "--checkpoint", str(root / "teacher/last.pt"),
                            "--steps", "16", "--lr", "2e-3", "--val_every", "1"))
    # Only the replaced decoder convolutions learn; the teacher is frozen.
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("g_s.") for n in trainable)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.fit()
    distill = losses(distill_dir)
    assert np.mean(distill[-4:]) < 0.8 * np.mean(distill[:4])
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert {p.name for p in (distill_dir / "recon").iterdir()} >= {"origin", "pre_e000", "e000"}

    Trainer(flags(train, test, ft_dir, "--resume_student", str(distill_dir / "best_msssim.pt"),
                  "--loss_type", "recon", "--steps", "4", "--lr", "1e-3")).fit()
    for name in ("ft_last.pt", "ft_best.pt"):
        assert (ft_dir / name).is_file()
    assert (ft_dir / "recon_ft" / "pre_e000").is_dir()
    student = load_file(ft_dir / "ft_last.pt")
    assert student["replace"]["decoder_upsample"] is True
    # Upsample+Conv blocks hold their 5x5 convolution under .conv (a ConvTranspose2d has no such child).
    assert {"g_s.0.conv.weight", "g_s.6.conv.weight"} <= set(student["state_dict"])


def test_finetune_with_frozen_igdns_as_the_readme_documents(teacher):
    # README: the fine-tuning command plus "--decoder_upsample true --freeze_igdn true" freezes the IGDNs. It
    # failed with "was trained with another replace recipe": the student's recorded scope was compared too.
    root, train, test = teacher
    distill_dir = root / "distill_frozen"
    Trainer(flags(train, test, distill_dir, "--distill", "--checkpoint", str(root / "teacher/last.pt"),
                  "--steps", "2", "--lr", "2e-3", "--val_every", "1")).fit()
    trainer = Trainer(flags(train, test, root / "ft_frozen", "--resume_student", str(distill_dir / "best_msssim.pt"),
                            "--loss_type", "recon", "--steps", "2", "--decoder_upsample", "true",
                            "--freeze_igdn", "true"))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.endswith((".beta", ".gamma")) for n in trainable)  # no GDN/IGDN trains
    assert trainer.replace_config["decoder_upsample"] and trainer.replace_config["freeze_igdn"]
    trainer.fit()
    with pytest.raises(Exception, match="another replace recipe"):  # a different architecture is still refused
        Trainer(flags(train, test, root / "ft_relu", "--resume_student", str(distill_dir / "best_msssim.pt"),
                      "--steps", "1", "--act", "relu", "--replace_parts", "decoder"))


def test_distill_needs_teacher_weights(teacher):
    root, train, test = teacher
    with pytest.raises(Exception, match="teacher"):
        Trainer(flags(train, test, root / "x", "--distill", "--steps", "1"))
