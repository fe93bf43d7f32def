"""A generated sweep of bad input over every entry point's declared options (issue 28).

From each command's argparse parser: every numeric option (``common.cli.number``, ``int`` or ``float``) at
0, -1, nan, inf and 1e30, and every integer one also at 10^12 (except the run lengths --steps, --trials and
--warm_start_steps, where it is a long run); every choice option (and every true/false flag) at a value it does not offer; the
free-text options that name something (a model, a block, a recipe, a codec list, ...) at a name nothing has; and a
few path options at a missing file, a directory, a plain file and a truncated checkpoint or curve. The other
flags of a case are valid tiny values (images of 48 px, the tiny model, one training step), so that a case
that is accepted runs the command for real, briefly. Each case runs in this process through
``common.cli.run_main`` (SystemExit caught, stderr captured) under a time limit, and must end with status 0,
or with status 2 and exactly one non-empty stderr line that starts with ``error:`` (argparse's own refusals:
``<prog>: error:``, see ``OneLineErrorParser``); never an uncaught exception, never over the limit.

Cases per entry point (``CASE_COUNTS``, checked against the generated cases by
``test_the_case_table_is_the_generated_one``); the whole sweep takes about 30 s on one core of the project's
2-core machine (most cases are refused by the parser; an accepted one trains one step of the tiny model):

<!-- case-table -->
| entry point | numeric | choice | name | path | cases |
|---|---:|---:|---:|---:|---:|
| common.train | 394 | 52 | 9 | 11 | 466 |
| common.eval | 51 | 18 | 4 | 7 | 80 |
| common.export.onnx | 56 | 14 | 2 | 4 | 76 |
| common.rd | 0 | 2 | 0 | 6 | 8 |
| common.report | 0 | 0 | 0 | 4 | 4 |
| common.search | 11 | 1 | 2 | 1 | 15 |
| baselines.compare | 6 | 0 | 4 | 4 | 14 |
| baselines.sweep | 10 | 0 | 2 | 4 | 16 |
| baselines.classic | 0 | 0 | 2 | 4 | 6 |
| common.data.coco_prepare | 29 | 2 | 0 | 3 | 34 |
| baselines.pretrain | 0 | 1 | 0 | 2 | 3 |
| baselines.stats | 17 | 0 | 0 | 3 | 20 |
| baselines.budget | 12 | 0 | 0 | 0 | 12 |
| all | | | | | 754 |
<!-- /case-table -->
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import os
import re
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.cli import OneLineErrorParser, run_main
from tests.helpers import REPO, write_image_dirs

pytestmark = pytest.mark.sweep

LIMIT_S = 20  # per case
NUMBERS = ("0", "-1", "nan", "inf", "1e30")
HUGE_INT = "1000000000000"  # 1e30 is no integer to argparse; this one is, and no size or count should take it
# Integer options whose huge value is a long run the user asked for, not a mistake.
RUN_LENGTHS = {("common.train", "--steps"), ("common.search", "--trials"), ("baselines.sweep", "--warm_start_steps")}
WRONG_CHOICE = "no-such-choice"

# entry point -> the module whose main(argv) it runs
ENTRY_POINTS = {
    "common.train": "common.train.__main__",
    "common.eval": "common.eval.__main__",
    "common.export.onnx": "common.export.onnx",
    "common.rd": "common.rd",
    "common.report": "common.report",
    "common.search": "common.search",
    "baselines.compare": "baselines.compare",
    "baselines.sweep": "baselines.sweep",
    "baselines.classic": "baselines.classic",
    "common.data.coco_prepare": "common.data.coco_prepare",
    "baselines.pretrain": "baselines.pretrain",
    "baselines.stats": "baselines.stats",
    "baselines.budget": "baselines.budget",
}

# Valid tiny flags of one training step; {name} is filled from the workspace (see ``resolve``).
TRAIN = [("--model", "bmshj2018-factorized-tiny"), ("--train_dataset", "{train}"), ("--test_dataset", "{test}"),
         ("--patch_size", "32"), ("--batch_size", "2"), ("--steps", "1"), ("--num_workers", "0"),
         ("--progress", "false"), ("--recon_every", "0")]

# The valid command each case changes: (flag, value...) pairs; a flag of None is a positional argument.
BASE = {
    "common.train": [*TRAIN, ("--save_dir", "{case}/run")],
    "common.eval": [("--model", "bmshj2018-factorized-tiny"), ("--checkpoint", "{checkpoint}"),
                    ("--dataset", "{test}"), ("--output", "{case}/eval.json")],
    "common.export.onnx": [("--ckpt", "{checkpoint}"), ("--part", "decoder"), ("--out", "{case}/dec.onnx"),
                           ("--input_size", "32")],
    "common.rd": [("--anchor", "{anchor}"), ("--test", "{curve}")],
    "common.report": [(None, "{bundle}"), ("--out_dir", "{case}/reports")],
    "common.search": [("--space", "lr=log:0.0001:0.01"), ("--trials", "1"), ("--out_dir", "{case}/search"), *TRAIN],
    "baselines.compare": [("--out_dir", "{case}/cmp"), ("--arm", "adam=--optimizer adam"),
                          ("--arm", "balanced=--optimizer balanced"), ("--lambdas", "0.01"), ("--anchors", ""),
                          ("--eval_dataset", "{eval}"), *TRAIN],
    "baselines.sweep": [("--lambdas", "0.01"), ("--out_dir", "{case}/sweep"), ("--eval_dataset", "{eval}"), *TRAIN],
    "baselines.classic": [("--dataset", "{test}"), ("--out_dir", "{case}/classic"), ("--codecs", "jpeg"),
                          ("--qualities", "50")],
    "common.data.coco_prepare": [("--coco_dir", "{coco}"), ("--out_dir", "{case}/coco"), ("--size", "32"),
                                 ("--workers", "1")],
    "baselines.pretrain": [("--out", "{case}/base.pt"), ("--save_dir", "{case}/pretrain"), *TRAIN,
                           ("--val_patch_size", "32")],
    "baselines.stats": [(None, "{case}/bundle"), ("--bootstrap", "10")],
    # runs that kept no weights along the way: an accepted value ends at that one-line refusal
    "baselines.budget": [(None, "{work}/a_dir"), (None, "{bundle}"), ("--bootstrap", "10")],
}

# Path options and the wrong things given to them.
PATHS = {
    "common.train": [("--checkpoint", ("missing", "dir", "truncated")), ("--resume", ("missing", "dir", "truncated")),
                     ("--train_dataset", ("missing", "file", "empty_dir")), ("--coco_dir", ("missing", "file"))],
    "common.eval": [("--checkpoint", ("missing", "dir", "truncated")), ("--dataset", ("missing", "file", "empty_dir")),
                    ("--output", ("dir",))],
    "common.export.onnx": [("--ckpt", ("missing", "dir", "truncated")), ("--out", ("dir",))],
    "common.rd": [("--anchor", ("missing", "dir", "truncated_json")), ("--test", ("missing", "dir", "truncated_json"))],
    "common.report": [(None, ("missing", "file", "empty_dir")), ("--out_dir", ("file",))],
    "common.search": [("--out_dir", ("file",))],
    "baselines.compare": [("--start_checkpoint", ("missing", "dir", "truncated")), ("--eval_dataset", ("missing",))],
    "baselines.sweep": [("--start_checkpoint", ("missing", "dir", "truncated")), ("--eval_dataset", ("missing",))],
    "baselines.classic": [("--dataset", ("missing", "file", "empty_dir")), ("--out_dir", ("file",))],
    "common.data.coco_prepare": [("--coco_dir", ("missing", "file", "empty_dir"))],
    "baselines.pretrain": [("--out", ("dir",)), ("--save_dir", ("file",))],
    "baselines.stats": [(None, ("missing", "file", "empty_dir"))],
    "baselines.budget": [],  # its two folders are positional, which a path case cannot give apart
}
# Free-text options that name something of a registry (not argparse choices), at a name nothing has.
NAMES = {
    "common.train": ("--model", "--act", "--recipe", "--device", "--amp", "--local_fp32_custom", "--group_lr",
                     "--unfreeze_at", "--act_opt"),
    "common.eval": ("--model", "--quality", "--act", "--test_set"),
    "common.export.onnx": ("--model", "--act"),
    "common.search": ("--space", "--storage"),
    "baselines.compare": ("--arm", "--lambdas", "--seeds", "--anchors"),
    "baselines.sweep": ("--lambdas", "--recipe"),
    "baselines.classic": ("--codecs", "--qualities"),
}

# Base flags a path case leaves out, so that its path is what the command judges (not a clash of two flags).
DROP = {("common.train", "--coco_dir"): ("--train_dataset", "--test_dataset")}
BAD_PATHS = {"missing": "{work}/missing/nothing.pt", "dir": "{work}/a_dir", "file": "{work}/a_file.txt",
             "empty_dir": "{work}/empty_dir", "truncated": "{truncated}", "truncated_json": "{truncated_json}"}


class _Captured(BaseException):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


@functools.cache
def declared_parser(entry: str) -> argparse.ArgumentParser:
    """The parser ``main`` builds, taken at its first parse (several mains build theirs inline)."""
    if entry == "common.train":
        from common.train.options import build_parser

        return build_parser()
    module = importlib.import_module(ENTRY_POINTS[entry])
    original = OneLineErrorParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    OneLineErrorParser.parse_known_args = capture
    try:
        module.main([])
    except _Captured as captured:
        return captured.parser
    finally:
        OneLineErrorParser.parse_known_args = original
    raise AssertionError(f"{entry}: main parsed nothing")


def _numeric(action: argparse.Action) -> bool:
    return action.type in (int, float) or getattr(action.type, "__name__", "") in ("int", "float",
                                                                                   "_optional_float")


def _boolean(action: argparse.Action) -> bool:
    return getattr(action.type, "__name__", "") == "str2bool"


def generate_cases() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(entry point, kind, flag, values) of every case; kind is number, choice, name or path."""
    cases = []
    for entry in ENTRY_POINTS:
        parser = declared_parser(entry)
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = max(action.option_strings, key=len)
            repeat = action.nargs if isinstance(action.nargs, int) else 1
            if _numeric(action):
                huge = getattr(action.type, "__name__", "") == "int" and (entry, flag) not in RUN_LENGTHS
                cases += [(entry, "number", flag, (value,) * repeat) for value in NUMBERS + (HUGE_INT,) * huge]
            elif action.choices or _boolean(action):
                cases.append((entry, "choice", flag, (WRONG_CHOICE,) * repeat))
        cases += [(entry, "name", flag, (WRONG_CHOICE,)) for flag in NAMES.get(entry, ())]
        for flag, kinds in PATHS[entry]:
            cases += [(entry, "path", flag or "POSITIONAL", (BAD_PATHS[kind],)) for kind in kinds]
    return cases


CASES = generate_cases()
CASE_COUNTS = {entry: sum(case[0] == entry for case in CASES) for entry in ENTRY_POINTS}


def case_table() -> str:
    rows = ["| entry point | numeric | choice | name | path | cases |", "|---|---:|---:|---:|---:|---:|"]
    for entry in ENTRY_POINTS:
        kinds = [sum(case[0] == entry and case[1] == kind for case in CASES)
                 for kind in ("number", "choice", "name", "path")]
        rows.append(f"| {entry} | {' | '.join(map(str, kinds))} | {sum(kinds)} |")
    rows.append(f"| all | | | | | {len(CASES)} |")
    return "\n".join(rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny valid inputs of every command, and the wrong things the path cases give instead."""
    from common.train.engine import Trainer
    from common.train.options import parse_config

    work = tmp_path_factory.mktemp("sweep")
    train, test = write_image_dirs(work / "images", size=48, n_train=4, n_test=2)
    _, evaluation = write_image_dirs(work / "evaluation", size=48, n_train=0, n_test=2, seed=1)
    Trainer(parse_config(["--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset",
                          str(test), "--patch_size", "32", "--batch_size", "2", "--steps", "1", "--num_workers", "0",
                          "--progress", "false", "--recon_every", "0", "--save_dir", str(work / "run")])).fit()
    checkpoint = work / "run" / "last.pt"
    data = checkpoint.read_bytes()
    (work / "truncated.pt").write_bytes(data[: len(data) // 2])
    anchor = REPO / "baselines" / "published" / "kodak" / "compressai-bmshj2018-factorized_mse_cuda.json"
    curve = REPO / "results" / "demo" / "curves" / "adam_seed0.json"
    text = anchor.read_text()
    (work / "truncated.json").write_text(text[: len(text) // 2])
    (work / "a_dir").mkdir()
    (work / "a_dir" / "something.txt").write_text("not what was asked for\n")
    (work / "empty_dir").mkdir()
    (work / "a_file.txt").write_text("not what was asked for\n")
    (work / "coco" / "train2017").mkdir(parents=True)
    for image in sorted(train.iterdir())[:3]:
        shutil.copy(image, work / "coco" / "train2017" / image.with_suffix(".jpg").name)
    return {"work": str(work), "train": str(train), "test": str(test), "eval": str(evaluation), "checkpoint": str(checkpoint),
            "truncated": str(work / "truncated.pt"), "truncated_json": str(work / "truncated.json"),
            "anchor": str(anchor), "curve": str(curve),
            # a compare bundle of 3 seeds: baselines.stats needs 2 or more
            "bundle": str(REPO / "results" / "study-scratch"),
            "coco": str(work / "coco")}


def build_argv(entry: str, flag: str, values: tuple[str, ...], fill: dict) -> list[str]:
    """The entry point's valid tiny command with ``flag`` set to ``values`` (replacing the base's own value)."""
    parser = declared_parser(entry)
    action = parser._option_string_actions.get(flag)  # None: a training flag that a driver passes on
    dest = action.dest if action is not None else None
    argv = []
    for base_flag, *base_values in BASE[entry]:
        if base_flag is None:
            if flag == "POSITIONAL":
                continue
        elif base_flag in parser._option_string_actions and parser._option_string_actions[base_flag].dest == dest:
            continue
        elif base_flag == flag or base_flag in DROP.get((entry, flag), ()):
            continue
        argv += ([] if base_flag is None else [base_flag]) + [value.format(**fill) for value in base_values]
    if flag == "POSITIONAL":
        return [values[0].format(**fill), *argv]
    return [*argv, flag, *(value.format(**fill) for value in values)]


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException, so that no ``except Exception`` of the command swallows it."""


def _alarm(signum, frame):
    raise CaseTimeout(f"over {LIMIT_S} s")


def run_case(entry: str, argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run ``python -m entry argv`` in this process as its ``cli()`` does: (exit status, stderr, seconds)."""
    module = importlib.import_module(ENTRY_POINTS[entry])
    err, out = io.StringIO(), io.StringIO()
    # What a command may set for its process, put back for the cases and tests that follow in this worker.
    threads, environ, pixels = torch.get_num_threads(), dict(os.environ), Image.MAX_IMAGE_PIXELS
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    started = time.perf_counter()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd), \
                warnings.catch_warnings():
            run_main(module.main, argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)
        Image.MAX_IMAGE_PIXELS = pixels
    return (0 if code is None else code), err.getvalue(), time.perf_counter() - started


ERROR_LINE = re.compile(r"^(python -m [\w.]+: )?error: \S")


def _case_id(case) -> str:
    entry, kind, flag, values = case
    shown = values[0].replace("{work}/", "").replace("{", "").replace("}", "")
    return f"{entry}:{flag}={shown}"


@pytest.mark.parametrize("case", [pytest.param(case, id=_case_id(case)) for case in CASES])
def test_bad_input_is_one_line_or_a_run(case, workspace, tmp_path):
    entry, kind, flag, values = case
    fill = {**workspace, "case": str(tmp_path)}
    if entry == "baselines.stats":
        shutil.copytree(workspace["bundle"], tmp_path / "bundle")  # stats writes into its bundle
    argv = build_argv(entry, flag, values, fill)
    code, err, seconds = run_case(entry, argv, tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 2), f"exit {code}: {argv}\n{err}"
    assert "Traceback" not in err, f"{argv}\n{err}"
    if code == 2:
        assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"{argv}\n{err}"


def test_the_case_table_is_the_generated_one():
    text = __doc__.split("<!-- case-table -->\n")[1].split("<!-- /case-table -->")[0].strip()
    assert text == case_table(), f"update the module docstring's table to:\n{case_table()}"
    assert all(CASE_COUNTS.values())


def test_make_test_runs_the_sweep():
    # The sweep is marked ``sweep`` (pyproject.toml); CI's ``make test`` must not deselect it.
    command = next(line for line in (REPO / "Makefile").read_text().splitlines() if "-m pytest" in line)
    assert " -m " not in command.split("-m pytest", 1)[1] and "sweep" not in command, command
