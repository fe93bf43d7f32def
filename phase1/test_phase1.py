"""Phase 1 run scripts on tiny images: the Adam baseline, Balanced R-D with logged task weights, the grid search."""
from __future__ import annotations

import csv

import pytest

from tests.helpers import run_script, write_image_dirs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase1")
    train, test = write_image_dirs(root, size=64, n_train=4, n_test=1)
    return root, {"DATA": str(train), "TEST_DATA": str(test), "OUT": str(root / "runs"), "STEPS": "2",
                  "BATCH": "2", "MODEL": "hpcm-tiny"}


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_standard_and_balanced(env):
    root, variables = env
    for script in ("phase1/run_standard.sh", "phase1/run_balanced.sh"):
        result = run_script(script, variables, "--num_workers", "0", "--progress", "false")
        assert result.returncode == 0, result.stderr[-2000:]
    standard = rows(root / "runs/phase1/standard/train_log.csv")
    balanced = rows(root / "runs/phase1/balanced/train_log.csv")
    assert len(standard) == len(balanced) == 2
    assert not any(key.startswith("weight_") for key in standard[0])
    weights = [[float(row[f"weight_{task}"]) for task in ("distortion", "rate")] for row in balanced]
    assert all(abs(sum(w) - 1) < 1e-6 for w in weights)
    # The logits start equal and the first logit step is ±w_lr (Adam's first step), so the weights moved.
    assert weights[0] != [0.5, 0.5]
    assert (root / "runs/phase1/balanced/task_weights.png").stat().st_size > 0


def test_grid_search_runs_every_point(env):
    root, variables = env
    result = run_script("phase1/run_hparam_search.sh", {**variables, "STEPS": "1", "GAMMAS": "0.001,0.01",
                                                         "W_LRS": "0.025"}, "--num_workers", "0",
                        "--progress", "false")
    assert result.returncode == 0, result.stderr[-2000:]
    trials = rows(root / "runs/phase1/hparam_search/trials.csv")
    assert sorted(float(t["params_gamma"]) for t in trials) == [0.001, 0.01]
    assert all(t["state"] == "COMPLETE" for t in trials)


def test_without_a_model_the_scripts_fine_tune_the_shipped_base(env):
    # The default run must end somewhere meaningful: the shipped base model fine-tuned in the demo's regime.
    root, variables = env
    defaults = {key: value for key, value in variables.items() if key != "MODEL"}
    result = run_script("phase1/run_balanced.sh", {**defaults, "OUT": str(root / "base_runs")}, "--num_workers", "0",
                        "--progress", "false")
    assert result.returncode == 0, result.stderr[-2000:]
    import json
    flags = json.loads((root / "base_runs/phase1/balanced/convergence.json").read_text())
    assert flags["total_steps"] == 2
    readme = (root / "base_runs/phase1/balanced/README.md").read_text()
    assert "bmshj2018-factorized-small" in readme and "bmshj2018-factorized-small.pt" in readme
    assert "`--gamma`: `[0.03]`" in readme
