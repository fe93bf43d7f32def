"""common.search: a resumed TPE study draws new values, several processes share one study through --storage,
and the ranked table is written as CSV and Markdown."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from common import search
from tests.test_engine import image_dirs  # noqa: F401 - module fixture

ROOT = Path(__file__).resolve().parents[1]


def search_argv(image_dirs, out_dir, *extra):  # noqa: F811
    train, test = image_dirs
    return ["--space", "lr=log:0.0001:0.01", "--space", "w_lr=float:0.01:0.1", "--out_dir", str(out_dir),
            "--use_balanced", "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train),
            "--test_dataset", str(test), "--patch_size", "32", "--batch_size", "2", "--steps", "1",
            "--num_workers", "0", "--progress", "false", "--recon_every", "0", *extra]


def trials(storage: str) -> list:
    return optuna.load_study(study_name="search", storage=storage).get_trials(deepcopy=False)


def test_a_resumed_tpe_study_does_not_repeat_the_values_it_tried(image_dirs, tmp_path):  # noqa: F811
    # The same sampler seed on resume drew trial 0's values again for trial 2 (seed 004's review saw it).
    assert search.main(search_argv(image_dirs, tmp_path, "--trials", "2")) == 0
    assert search.main(search_argv(image_dirs, tmp_path, "--trials", "4")) == 0
    params = [tuple(sorted(t.params.items())) for t in trials(f"sqlite:///{tmp_path / 'study.db'}")]
    assert len(params) == 4 and len(set(params)) == 4
    ranked = (tmp_path / "trials.md").read_text().splitlines()
    assert ranked[0].startswith("| number | value |") and len(ranked) == 2 + 4


def test_two_processes_share_one_study_through_storage(image_dirs, tmp_path):  # noqa: F811
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="search", storage=storage)  # both processes then load it
    commands = [[sys.executable, "-m", "common.search", *search_argv(image_dirs, tmp_path / f"p{i}", "--trials", "4",
                                                                      "--storage", storage, "--search_seed", str(i))]
                for i in range(2)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in commands]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    finished = [t for t in trials(storage) if t.state == optuna.trial.TrialState.COMPLETE]
    # Each process stops once the study holds 4 finished trials; the other's running trial still finishes.
    assert 4 <= len(finished) <= 5
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)


def test_a_bad_storage_url_is_one_line_error(image_dirs, tmp_path):  # noqa: F811
    with pytest.raises(search.UserError, match="--storage nosuchdb://x"):
        search.main(search_argv(image_dirs, tmp_path, "--trials", "1", "--storage", "nosuchdb://x"))


@pytest.mark.parametrize("space,flags,message", [
    ("gamma=log:0.001:0.01", ("--optimizer", "adam"), "--gamma is an option of --optimizer .*not of --optimizer adam"),
    # every choice is checked, not only the first
    ("optimizer=choice:balanced,adam", ("--w_lr", "0.05"), "--w_lr is an option of --optimizer .*not of --optimizer adam"),
])
def test_a_space_the_run_would_refuse_stops_the_search_before_its_first_trial(image_dirs, tmp_path, space,  # noqa: F811
                                                                             flags, message):
    train, test = image_dirs
    with pytest.raises(search.UserError, match=message):
        search.main(["--space", space, *flags, "--out_dir", str(tmp_path), "--model", "bmshj2018-factorized-tiny",
                     "--train_dataset", str(train), "--test_dataset", str(test), "--steps", "1", "--trials", "2"])
    assert not (tmp_path / "study.db").exists()


def test_a_grid_study_draws_its_heatmap_and_the_importance_of_its_parameters(image_dirs, tmp_path):  # noqa: F811
    from PIL import Image

    train, test = image_dirs
    assert search.main(["--space", "lr=choice:0.001,0.003", "--space", "w_lr=choice:0.01,0.05", "--sampler", "grid",
                        "--out_dir", str(tmp_path), "--use_balanced", "--model", "bmshj2018-factorized-tiny",
                        "--train_dataset", str(train), "--test_dataset", str(test), "--patch_size", "32",
                        "--batch_size", "2", "--steps", "1", "--num_workers", "0", "--progress", "false",
                        "--recon_every", "0"]) == 0
    for name in ("heatmap.png", "importance.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 200 and image.size[1] > 150
    # A 2 x 2 grid: the heatmap's four cells are the four trials' losses (ranked table, lowest first).
    ranked = (tmp_path / "trials.md").read_text().splitlines()[2:]
    assert len(ranked) == 4


# Each worker waits for the same moment right before it creates optuna's tables, and then creates them as a
# worker does that checked for them before the other created them: so the race is run every time, not only when
# the two start-ups happen to take equally long.
LAUNCH_TOGETHER = """
import sys, time
import common.search
from optuna.storages._rdb import models

start, metadata, calls = float(sys.argv.pop(1)), models.BaseModel.metadata, []
create_all = metadata.create_all

def together(bind, **kwargs):
    calls.append(bind)
    if len(calls) > 1:
        return create_all(bind, **kwargs)
    while time.time() < start:
        pass
    return create_all(bind, checkfirst=False)  # no table was there when this worker looked

metadata.create_all = together
sys.argv[0] = "common.search"
common.search.cli()
"""


def test_two_workers_started_at_once_on_an_empty_storage_both_run(image_dirs, tmp_path):  # noqa: F811
    # Both created optuna's tables: the loser died with "table studies already exists" (issue 28).
    import time

    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    start = time.time() + 15
    commands = [[sys.executable, "-c", LAUNCH_TOGETHER, str(start),
                 *search_argv(image_dirs, tmp_path / f"w{i}", "--trials", "2", "--storage", storage,
                              "--study_name", "search", "--search_seed", str(i))] for i in range(2)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in commands]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    # The study stops at 2 finished trials (one each, or a third that had started when the second finished).
    assert 2 <= len([t for t in trials(storage) if t.state == optuna.trial.TrialState.COMPLETE]) <= 3


def test_a_storage_created_by_another_worker_meanwhile_is_loaded(tmp_path, monkeypatch):
    # The same race, made certain: the first attempt fails as the losing worker's CREATE TABLE does.
    import sqlalchemy

    real, calls = optuna.create_study, []

    def racing(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            real(**kwargs)  # the other worker wins ...
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing)
    study = search.open_study("shared", f"sqlite:///{tmp_path / 'S.db'}")
    assert study.study_name == "shared" and len(calls) == 2
    with pytest.raises(search.UserError, match="no such table|unable to open"):
        search.open_study("shared", f"sqlite:///{tmp_path / 'missing' / 'S.db'}")
