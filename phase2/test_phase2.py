"""Phase 2 scripts on tiny images: γ schedules, QP fine-tuning, optuna search, and the NPU recipes end to end."""
from __future__ import annotations

import csv

import onnx
import pytest
import torch

from common.checkpoint import load_file
from tests.helpers import run_script, write_image_dirs

ARGS = ("--num_workers", "0", "--progress", "false")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase2")
    train, test = write_image_dirs(root, size=64, n_train=4, n_test=1)
    return root, {"DATA": str(train), "TEST_DATA": str(test), "OUT": str(root / "runs"), "STEPS": "2", "BATCH": "2"}


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_adaptive_gamma_then_qp_finetune(env):
    root, variables = env
    ok(run_script("phase2/run_balanced_adaptive.sh", {**variables, "GAMMA_STRATEGY": "cosine", "STEPS": "4"}, *ARGS))
    run = root / "runs/phase2/balanced_cosine"
    schedule = load_file(run / "last.pt")["gamma_schedule"]
    assert schedule["epoch"] == 2  # stepped once per epoch: 4 images in batches of 2, 4 steps = 2 epochs
    ok(run_script("phase2/run_finetune.sh", {**variables, "CHECKPOINT": str(run / "last.pt")}, *ARGS))
    before, after = load_file(run / "last.pt")["state_dict"], load_file(root / "runs/phase2/finetune_qp/last.pt")["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after and before[k].is_floating_point())


def test_finetune_without_checkpoint_is_one_line(env, tmp_path):
    root, variables = env
    result = run_script("phase2/run_finetune.sh", {**variables, "OUT": str(tmp_path)})
    assert result.returncode == 2 and "run make phase1-balanced first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_optuna_search(env):
    root, variables = env
    ok(run_script("phase2/run_optuna.sh", {**variables, "STEPS": "1", "TRIALS": "2"}, *ARGS))
    with open(root / "runs/phase2/optuna/trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 2 and all(0.0005 <= float(t["params_gamma"]) <= 0.02 for t in trials)


def test_npu_recipes_and_export(env, tmp_path):
    root, variables = env
    teacher_dir = tmp_path / "teacher"
    ok(run_script("phase1/run_standard.sh", {**variables, "MODEL": "bmshj2018-factorized-tiny", "PATCH": "32",
                                             "OUT": str(teacher_dir)}, *ARGS))
    npu = {**variables, "NPU_MODEL": "bmshj2018-factorized-tiny", "PATCH": "32", "OUT": str(tmp_path / "runs"),
           "CHECKPOINT": str(teacher_dir / "phase1/standard/last.pt"), "INPUT_SIZE": "64"}
    for script in ("run_relu_encoder.sh", "run_qat.sh", "run_distill.sh", "run_gdnish_all.sh"):
        result = ok(run_script(f"phase2/npu/{script}", npu, *ARGS))
        assert "starting from CHECKPOINT" in result.stdout
    assert load_file(tmp_path / "runs/phase2/npu/qat/last.pt")["qat"]["scope"] == "encoder"
    ok(run_script("phase2/npu/run_export.sh", npu))
    exported = sorted(p.name for p in (tmp_path / "runs/phase2/npu/onnx").iterdir())
    assert len(exported) == 12
    graph = onnx.load(str(tmp_path / "runs/phase2/npu/onnx/relu_encoder_encoder.onnx")).graph
    assert "Relu" in {node.op_type for node in graph.node}
