"""Compare optimizers the way the field does: λ sweeps per optimizer, real bitstreams, BD-rates, anchors.

``python -m baselines.compare --out_dir runs/cmp --lambdas 0.0018,0.0035,0.0067,0.013 \\
    --arm adam="--optimizer adam" --arm balanced="--optimizer balanced --gamma 0.003 --w_lr 0.025" \\
    [--seeds 0,1,2] [--start_checkpoint BASE.pt | --start_from SWEEP_DIR] [--jobs 2] [train flags ...]``

Every *arm* is one optimizer setting; all arms share every other training flag, the λ ladder, the seeds
and the starting model, so their curves differ only by the optimizer. For each arm, seed and λ a run
of ``python -m common.train`` is made (in worker processes that import the engine once; ``--jobs 2`` runs
two at a time with one thread each), then every final model is evaluated with real bitstreams on the evaluation images
(CompressAI's protocol, ``common.eval``; as many at a time as train), JPEG and WebP are measured on the same images
(``baselines.classic``), and one table is printed: the R-D points, whether each run converged
(``common.train.convergence``), the BD-rate and BD-PSNR of every arm against the first arm and against
JPEG (per seed, then mean ± standard deviation over seeds), and the overlap of each pair.

Starting models: from scratch (default), one shared checkpoint (``--start_checkpoint``, e.g. the
pretrained base model of ``make pretrain``), or per λ and seed the final model of another sweep
(``--start_from DIR``: ``DIR/seed<k>/lambda_<λ>/last.pt``), which is how the fine-tuning study continues
the converged Adam models.

Everything lands in ``--out_dir``: run folders ``<arm>/seed<k>/lambda_<λ>/``, and the study bundle that
``python -m common.report`` turns into tables, figures and an HTML page: ``summary.json`` (settings,
command, git commit, wall time, every point, every BD pair), ``curves/*.json`` (CompressAI format),
``points.csv``, ``bd.csv``, ``rd.png``, ``task_weights/*.csv`` and ``recon/*.png`` (the same crop of one
test photo from each arm and each anchor at matched bpp). The sweep is resumable: finished runs are
skipped, interrupted ones continue from their ``last.pt``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from baselines.classic import CODECS, DEFAULT_QUALITIES, DISPLAY_NAMES, codec_version, describe_codec, evaluate_codec
from common.checkpoint import load_file
from common.cli import OneLineErrorParser, number, parse_with_train_flags, run_main
from common.data.images import list_images
from common.errors import UserError
from common.paths import output_dir
from common.eval.evaluate import codec_description, describe, describe_test_set, evaluate, write_results
from common.rd import RDCurve, bd_row, computed, curve_from_json, trimmed

from baselines.study import AFTER, REPO, THEN, Arm, Point, run_dir  # noqa: F401  (REPO: for scripts and tests)

# Flags the comparison sets for each run itself.
_RESERVED = ("--lambda", "--save_dir", "--resume", "--seed", "--checkpoint", "--optimizer", "--use_balanced")


def parse_arm(text: str) -> Arm:
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"--arm must look like NAME=\"--optimizer adam ...\" (NAME of letters, digits, - and _), "
                        f"got {text!r}")
    tokens = shlex.split(flags)
    after = None
    if tokens[:1] == [AFTER]:
        if len(tokens) < 2 or tokens[1].startswith("-"):
            raise UserError(f"--arm {name}: {AFTER} needs the name of an earlier arm")
        after, tokens = tokens[1], tokens[2:]
    stages, current = [], []
    for token in tokens:
        if token == THEN:
            stages.append(tuple(current))
            current = []
        elif token == AFTER:
            raise UserError(f"--arm {name}: {AFTER} ARM may only lead the arm's flags")
        else:
            current.append(token)
    stages.append(tuple(current))
    if len(stages) > 1 and not all(stages):
        raise UserError(f"--arm {name}: every stage between {THEN} needs flags")
    return Arm(name, tuple(stages), after)


def check_arms(arms: Sequence[Arm]) -> None:
    """Arms with different names (one arm is a λ sweep); an arm's ``--after`` names an arm before it."""
    if len({arm.name for arm in arms}) != len(arms):
        raise UserError("give the --arm settings different names")
    if arms[0].after:
        raise UserError(f"the reference arm {arms[0].name} cannot start {AFTER} another arm")
    for index, arm in enumerate(arms):
        if arm.after and arm.after not in {earlier.name for earlier in arms[:index]}:
            raise UserError(f"--arm {arm.name}: {AFTER} {arm.after} must name an arm given before it")


def arm_waves(arms: Sequence[Arm]) -> list[list[Arm]]:
    """The arms in the order their runs can train: each wave starts from the final models of earlier ones."""
    depth: dict[str, int] = {}
    for arm in arms:
        depth[arm.name] = depth[arm.after] + 1 if arm.after else 0
    return [[arm for arm in arms if depth[arm.name] == level] for level in range(max(depth.values()) + 1)]


def parse_lambdas(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise UserError(f"--lambdas must be comma-separated numbers, got {text!r}") from exc
    if not values or any(not v > 0 for v in values):
        raise UserError(f"--lambdas needs positive values, got {text!r}")
    return values


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m baselines.compare", add_help=False,
                                description="λ sweeps per optimizer, real-bitstream evaluation, BD-rates against "
                                            "the first arm and against JPEG/WebP measured on the same images.")
    parser.add_argument("--out_dir", required=True, help="run folders and the study bundle")
    parser.add_argument("--arm", action="append", required=True, metavar='NAME="FLAGS"',
                        help="a setting (its training flags; stages joined by --then; --after ARM first to start "
                             "from that arm's models); the first is the reference; one arm is a λ sweep")
    parser.add_argument("--lambdas", required=True, help="comma-separated λ values")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--start_checkpoint", help="every run starts from these weights (e.g. the base model)")
    start.add_argument("--start_from", metavar="DIR",
                       help="each run starts from DIR/seed<k>/lambda_<λ>/last.pt (another sweep's final models)")
    parser.add_argument("--jobs", type=number(int, minimum=1, maximum=64), default=1,
                        help="trainings (then evaluations) at a time; each gets (usable cores)/jobs threads")
    parser.add_argument("--eval_dataset", help="images of the real-bitstream evaluation (default: "
                                               "--test_dataset, else the embedded test photos)")
    parser.add_argument("--test_set", help="test-set name recorded in the curves (see common.eval --test_set)")
    parser.add_argument("--anchors", default="jpeg,webp", help="classic codecs measured on the same images "
                                                                "('' for none)")
    parser.add_argument("--bundle_dir", help="where the study bundle goes (default: --out_dir), e.g. results/NAME "
                                             "to keep it apart from the run folders")
    parser.add_argument("--title", default="", help="title of the figure and the report")
    parser.add_argument("--recon_image", default=None,
                        help="file name of the evaluation image whose crop is shown at matched bpp "
                             "(default: the first)")
    return parser


# ------------------------------------------------------------------------------------------ training
def finished(folder: Path) -> bool:
    """A run is finished when it wrote its convergence verdict, which the engine does after its last step."""
    return (folder / "convergence.json").is_file() and (folder / "last.pt").is_file()


DIVERGED = "diverged.json"


def diverged_record(folder: Path) -> dict | None:
    """What a run that diverged recorded (its flags and the engine's message), or None."""
    path = folder / DIVERGED
    return json.loads(path.read_text()) if path.is_file() else None


def check_diverged_run(folder: Path, record: dict, flags: Sequence[str]) -> None:
    """A diverged run is a result of its flags: rerunning them diverges again, so it is kept, but only for the
    same flags."""
    if record.get("flags") != list(flags):
        raise UserError(f"{folder} holds a run that diverged with other flags ({shlex.join(record.get('flags', []))});"
                        " give another output folder or delete that run to train it again")


def stage_dirs(folder: Path, arm: Arm) -> list[Path]:
    """Where each stage of a run trains: the last in the run's folder, earlier ones beside it."""
    return [folder.with_name(f"{folder.name}.stage{index + 1}") for index in range(len(arm.stages) - 1)] + [folder]


def reads_lambda(flags: Sequence[str]) -> bool:
    """Whether a stage's loss has the R-D trade-off λ: not distillation (its target is the teacher's output) and
    not a ``--loss_type`` without λ (seed 000's reconstruction loss, the seeds' recon + λ_bpp·bpp)."""
    from common.losses import LOSS_OPTIONS
    from common.train.options import build_parser as train_parser

    parsed = train_parser().parse_args(list(flags))
    return not parsed.distill and "lmbda" in LOSS_OPTIONS[parsed.loss_type]


def stage_flags(train_argv: Sequence[str], flags: Sequence[str], seed: int, lmbda: float, folder: Path) -> list[str]:
    """The training flags of one stage (without its starting weights); ``--lambda`` where its loss reads λ."""
    trade_off = ["--lambda", repr(lmbda)] if reads_lambda([*train_argv, *flags]) else []
    return [*train_argv, *flags, "--seed", str(seed), *trade_off, "--save_dir", str(folder), "--progress", "false"]


def run_flags(train_argv: Sequence[str], arm: Arm, seed: int, lmbda: float, folder: Path) -> list[str]:
    """The training flags of one run: its last stage's (without its starting weights)."""
    return stage_flags(train_argv, arm.stages[-1], seed, lmbda, folder)


def train_command(train_argv: Sequence[str], arm: Arm, seed: int, lmbda: float, folder: Path,
                  start: Path | None) -> list[list[str]]:
    """The ``python -m common.train`` arguments of each stage of one run, each stage starting from the one before:
    a finished stage is skipped, one with a checkpoint resumed."""
    commands, previous = [], start
    for flags, where in zip(arm.stages, stage_dirs(folder, arm)):
        argv = stage_flags(train_argv, flags, seed, lmbda, where)
        if where != folder and finished(where):
            previous = where / "last.pt"
            continue
        if (where / "last.pt").is_file():
            commands.append([*argv, "--resume"])
        else:
            # No checkpoint yet: whatever a run that died before its first checkpoint left there is replaced.
            commands.append([*argv, "--overwrite", *(["--checkpoint", str(previous)] if previous is not None else [])])
        previous = where / "last.pt"
    return commands


def _start_worker(threads: int) -> None:
    """Each worker process imports the engine once and keeps it for all its runs (the import takes about 5 s
    on the project's machine, which a process per run paid every time)."""
    import torch

    import common.train.engine  # noqa: F401  (imported here so the first run does not pay for it)

    torch.set_num_threads(threads)


def _train(stages: list[list[str]], folder: str, flags: list[str]) -> str:
    """One run (its stages in order), in a worker process; returns its convergence line, or "diverged: ..." after
    writing ``folder/diverged.json`` (``flags``: the run's flags without its start, which a rerun must match). The
    console output of every stage goes to ``folder/train.out``."""
    import contextlib
    import traceback

    from common.checkpoint import atomic_write_text
    from common.cli import one_line
    from common.train.__main__ import main as train_main
    from common.train.engine import TrainingDiverged

    Path(folder).mkdir(parents=True, exist_ok=True)
    log_path = Path(folder) / "train.out"
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            for argv in stages:
                train_main(argv)
        except TrainingDiverged as exc:
            print(f"diverged: {one_line(exc)}", flush=True)
            atomic_write_text(Path(folder) / DIVERGED,
                              json.dumps({"flags": flags, "message": one_line(exc)}, indent=2) + "\n")
            return f"diverged: {one_line(exc)}"
        except UserError as exc:
            print(f"error: {one_line(exc)}", flush=True)
            return f"failed: {one_line(exc)}"
        except Exception as exc:  # noqa: BLE001  (the traceback goes to the run's own log)
            traceback.print_exc()
            return f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
    lines = log_path.read_text(errors="replace").splitlines()
    return next((line for line in reversed(lines) if line.startswith("convergence")), "convergence: no verdict")


def _worker_pool(parallel: int):
    """``parallel`` worker processes, each with (usable cores) / ``parallel`` threads: the cores this process may
    use (taskset, cgroups), not the machine's, since more threads than cores slows every run down many times over."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    # spawn, not fork: a forked child of a process whose OpenMP threads already ran can hang.
    return ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads,))


def train_all(waves: Iterable[list[tuple[list[list[str]], Path, list[str]]]], parallel: int) -> None:
    """Run the trainings (each stage's arguments, folder, the run's flags), wave after wave (a wave starts from
    the models of the waves before it): one at a time in this process, or ``parallel`` at a time in worker
    processes that each import the engine once (:func:`_worker_pool`).

    A run that diverges is a result: it is recorded in its folder and the sweep goes on. A run that fails
    otherwise stops the sweep with its last line once the runs already started have ended.
    """
    started = time.perf_counter()
    failures: list[str] = []

    def record(folder: Path, verdict: str) -> bool:
        """Print a finished run's verdict, or keep its failure; False when it failed."""
        if verdict.startswith("failed: "):
            failures.append(f"training in {folder} {verdict} (full output: {folder / 'train.out'})")
            return False
        print(f"[{time.perf_counter() - started:7.1f} s] {folder}: {verdict.split(': ', 1)[-1]}", flush=True)
        return True

    if parallel == 1:
        for jobs in waves:
            if not all(record(folder, _train(stages, str(folder), flags)) for stages, folder, flags in jobs):
                raise UserError(failures[0])
        return
    from concurrent.futures import as_completed

    with _worker_pool(parallel) as pool:
        for jobs in waves:
            futures = {pool.submit(_train, stages, str(folder), flags): folder for stages, folder, flags in jobs}
            for future in as_completed(futures):
                if future.cancelled():  # not started: a run before it failed
                    continue
                if not record(futures[future], future.result()):
                    for other in futures:
                        other.cancel()
            if failures:
                break
    if failures:
        raise UserError(failures[0])


# ------------------------------------------------------------------------------------------ evaluation
def _evaluate_checkpoint(checkpoint: str, images: list[str], root: str) -> tuple[list[dict], dict, int]:
    """Real-bitstream evaluation of one final model (in this process or a worker's): its per-image rows, their
    aggregate and the padding multiple it was evaluated with."""
    from common.assembly import load_model

    model = load_model(checkpoint=checkpoint)
    rows, aggregate = evaluate(model, images, root=root)
    return rows, aggregate, model.eval_pad_multiple


def evaluate_checkpoints(checkpoints: dict, images: list[Path], root: Path, parallel: int) -> dict:
    """``_evaluate_checkpoint`` of every checkpoint (values of ``checkpoints``, by the same keys): one at a time in
    this process, or ``parallel`` at a time in worker processes (a model's evaluation is independent of the
    others', and a study of 100+ runs spent minutes on it one at a time)."""
    jobs = {key: (str(path), [str(image) for image in images], str(root)) for key, path in checkpoints.items()}
    if parallel == 1 or len(jobs) < 2:
        return {key: _evaluate_checkpoint(*job) for key, job in jobs.items()}
    with _worker_pool(min(parallel, len(jobs))) as pool:
        futures = {key: pool.submit(_evaluate_checkpoint, *job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def evaluate_runs(out_dir: Path, arms: Sequence[Arm], seeds: Sequence[int], lambdas: Sequence[float],
                  images: list[Path], root: Path, test_set: dict, curves_dir: Path, parallel: int = 1,
                  checkpoint: str = "last.pt") -> tuple[list[Point], dict[tuple[str, int], Path]]:
    """Real-bitstream evaluation of every final model (``parallel`` at a time; ``checkpoint``: which file of each
    run folder, e.g. weights it kept along the way); one CompressAI-format curve per arm and seed whose runs all
    finished (where one diverged, the others are not evaluated: a curve needs every λ)."""
    complete = [(arm, seed) for arm in arms for seed in seeds
                if not any(diverged_record(run_dir(out_dir, arm.name, seed, lmbda)) for lmbda in lambdas)]
    results = evaluate_checkpoints({(arm.name, seed, lmbda): run_dir(out_dir, arm.name, seed, lmbda) / checkpoint
                                    for arm, seed in complete for lmbda in lambdas}, images, root, parallel)
    points, curves = [], {}
    for arm, seed in complete:
        aggregates, rows_per_point = [], []
        for lmbda in lambdas:
            folder = run_dir(out_dir, arm.name, seed, lmbda)
            rows, aggregate, pad_multiple = results[(arm.name, seed, lmbda)]
            aggregates.append(aggregate)
            rows_per_point.append(rows)
            points.append(Point(arm.name, seed, lmbda, aggregate, run_verdict(folder), training_seconds(folder)))
        name = arm.name if len(seeds) == 1 else f"{arm.name} (seed {seed})"
        path, _ = write_results(curves_dir / f"{arm.name}_seed{seed}.json", name,
                                describe(False, "zero", pad_multiple, pad_multiple),
                                [f"lambda={lmbda:g}" for lmbda in lambdas], aggregates, rows_per_point,
                                test_set=test_set, codec=codec_description(_model_name(folder)))
        curves[(arm.name, seed)] = path
    return points, curves


def diverged_runs(out_dir: Path, arms: Sequence[Arm], seeds: Sequence[int], lambdas: Sequence[float]) -> list[dict]:
    """Every run of the grid that diverged, with the engine's message."""
    runs = []
    for arm in arms:
        for seed in seeds:
            for lmbda in lambdas:
                record = diverged_record(run_dir(out_dir, arm.name, seed, lmbda))
                if record is not None:
                    runs.append({"arm": arm.name, "seed": seed, "lambda": lmbda, "message": record["message"]})
    return runs


def run_verdict(folder: Path) -> dict:
    """The run's convergence verdict under the current criterion, judged again from its logs (a run trained
    before the criterion changed is held to today's), with the window its ``convergence.json`` recorded."""
    from common.train import convergence
    from common.train.logging import read_rows

    recorded = json.loads((folder / "convergence.json").read_text())
    rows = {name: read_rows(folder / f"{name}.jsonl") for name in ("val_log", "train_log")}
    return convergence.assess(rows["val_log"], recorded["total_steps"], rows["train_log"]).to_dict()


def training_seconds(folder: Path) -> float | None:
    """Seconds of training the run's console output reports (summed over resumed segments)."""
    log = folder / "train.out"
    if not log.is_file():
        return None
    seconds = [float(m.group(1)) for m in re.finditer(r"^trained \d+ steps in ([0-9.]+) s", log.read_text(), re.M)]
    return sum(seconds) if seconds else None


def _model_name(folder: Path) -> str:
    return load_file(folder / "last.pt")["model"]["name"]


def anchor_curves(codecs: Sequence[str], images: list[Path], root: Path, test_set: dict, curves_dir: Path,
                  low: float, high: float) -> list[RDCurve]:
    """JPEG/WebP on the evaluation images over a dense ladder, written in full, trimmed to [low, high] dB."""
    anchors = []
    for codec in codecs:
        labels, aggregates, rows = evaluate_codec(codec, DEFAULT_QUALITIES, images, root)
        path, _ = write_results(curves_dir / f"{codec}.json", DISPLAY_NAMES[codec], describe_codec(codec),
                                labels, aggregates, rows, test_set=test_set, codec=codec_version(codec))
        anchors.append(trimmed(_load(path), low, high))
    return anchors


def _load(path: Path) -> RDCurve:
    return curve_from_json(json.loads(path.read_text()), source=str(path))


# ------------------------------------------------------------------------------------------ BD pairs
def bd_pairs(reference: str, arm_names: Sequence[str], seeds: Sequence[int], curves: dict[tuple[str, int], RDCurve],
             anchors: Sequence[RDCurve]) -> list[dict]:
    """Per seed: each other arm against the reference arm, and every arm against each anchor.

    With several seeds the reference arm's seeds are also compared with its first seed: that BD-rate is
    what seed noise alone produces, the yardstick for the differences between arms.
    """
    rows = []
    for seed in seeds:
        if (reference, seed) not in curves:
            continue
        for name in arm_names:
            if (name, seed) not in curves:
                continue
            if name != reference:
                rows.append({"pair": f"{name} vs {reference}", "seed": seed,
                             **bd_row(curves[(reference, seed)], curves[(name, seed)])})
            for anchor in anchors:
                rows.append({"pair": f"{name} vs {anchor.name}", "seed": seed, **bd_row(anchor, curves[(name, seed)])})
        if seed != seeds[0] and (reference, seeds[0]) in curves:
            rows.append({"pair": f"{reference} other seeds vs seed {seeds[0]} (seed noise)", "seed": seed,
                         **bd_row(curves[(reference, seeds[0])], curves[(reference, seed)])})
    return rows


def summarize_pairs(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each pair's BD-rate and BD-PSNR (computed rows only)."""
    summary = []
    for pair in dict.fromkeys(row["pair"] for row in rows):
        group = [row for row in rows if row["pair"] == pair]
        good = [row for row in group if computed(row)]
        entry = {"pair": pair, "seeds": len(group), "computed": len(good)}
        for key in ("bd_rate_pchip_%", "bd_psnr_pchip_dB", "quality_overlap_%", "rate_overlap_%"):
            values = [row[key] for row in good if not math.isnan(row[key])]
            entry[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
            entry[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        entry["note"] = _first_note(group)
        summary.append(entry)
    return summary


def _first_note(group: Sequence[dict]) -> str:
    """The note of the first seed that has one, and how many other seeds have one (bd.csv keeps them all)."""
    noted = [row for row in group if row["note"]]
    if not noted:
        return ""
    if len(group) == 1:
        return noted[0]["note"]
    more = f" (and {len(noted) - 1} more seeds, see bd.csv)" if len(noted) > 1 else ""
    return f"seed {noted[0]['seed']}: {noted[0]['note']}{more}"


# ------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    from baselines.study import write_bundle
    from common.receipt import git_commit

    started = time.perf_counter()
    # Before anything is written: a bundle folder that git tracks would otherwise count as a local change.
    commit = git_commit()
    parsed = parse_with_train_flags(build_parser(), argv)
    if parsed is None:
        return 0
    args, train_argv = parsed
    reserved = [flag for flag in train_argv if flag.split("=")[0] in _RESERVED]
    if reserved:
        raise UserError(f"{', '.join(reserved)} are set per run by the comparison; use --lambdas, --seeds, "
                        "--arm and --start_checkpoint/--start_from")
    arms = [parse_arm(text) for text in args.arm]
    check_arms(arms)
    lambdas, seeds = parse_lambdas(args.lambdas), parse_seeds(args.seeds)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    codecs = [c.strip() for c in args.anchors.split(",") if c.strip()]
    if any(c not in CODECS for c in codecs):
        raise UserError(f"--anchors must name some of: {', '.join(CODECS)} (got {args.anchors!r})")
    validation = _check_train_flags(train_argv, arms)
    images, root = _eval_images(args, train_argv)
    image_sets = describe_image_sets(validation, images)
    if image_sets["validation_and_test_share"]:
        print(f"warning: validation and the final evaluation share {len(image_sets['validation_and_test_share'])} "
              "image(s): the convergence verdict and best/EMA checkpoints then see the test images; give "
              "--eval_dataset (or a --test_dataset that is not the test set)", file=sys.stderr)
    starts = {(seed, lmbda): _start(args, seed, lmbda) for seed in seeds for lmbda in lambdas}
    for path in set(starts.values()) - {None}:  # a file that is no checkpoint fails here, not in every run
        load_file(path)
    out_dir = output_dir(args.out_dir, "--out_dir")
    output_dir(args.bundle_dir or out_dir, "--bundle_dir")

    def planned_waves():
        """Each wave's jobs, planned once the waves before it have trained (a run whose starting arm diverged
        is then recorded, not trained)."""
        for wave in arm_waves(arms):
            jobs = [_job(out_dir, train_argv, arm, seed, lmbda, starts[(seed, lmbda)])
                    for seed in seeds for lmbda in lambdas for arm in wave]
            jobs = [job for job in jobs if job is not None]
            print(f"training {len(jobs)} runs ({len(wave)} arms x {len(seeds)} seeds x {len(lambdas)} λ: "
                  f"{', '.join(arm.name for arm in wave)}; {args.jobs} at a time)", flush=True)
            yield jobs

    train_all(planned_waves(), args.jobs)

    bundle = Path(args.bundle_dir or out_dir)
    test_set = describe_test_set(root, len(images), args.test_set)
    diverged = diverged_runs(out_dir, arms, seeds, lambdas)
    if diverged:
        print(f"{len(diverged)} run(s) diverged; an arm has no curve for a seed where one of its runs diverged:",
              file=sys.stderr)
        for run in diverged:
            print(f"  {run['arm']}/seed{run['seed']}/λ={run['lambda']:g}: {run['message']}", file=sys.stderr)
    points, curve_paths = evaluate_runs(out_dir, arms, seeds, lambdas, images, root, test_set, bundle / "curves",
                                        args.jobs)
    if not any(key[0] == arms[0].name for key in curve_paths):
        raise UserError(f"every run of the reference arm {arms[0].name} diverged: there is no curve to compare "
                        "against (the bundle is not written)")
    curves = {key: _load(path) for key, path in curve_paths.items()}
    psnr = [p.metrics["psnr-rgb"] for p in points]
    anchors = anchor_curves(codecs, images, root, test_set, bundle / "curves", min(psnr), max(psnr))
    pairs = bd_pairs(arms[0].name, [a.name for a in arms], seeds, curves, anchors)
    write_bundle(bundle, run_root=out_dir, args=args, argv=list(sys.argv[1:] if argv is None else argv), arms=arms,
                 lambdas=lambdas, seeds=seeds, points=points, curves=curves, anchors=anchors, pairs=pairs,
                 summary=summarize_pairs(pairs), images=images, root=root, test_set=test_set,
                 wall_time=time.perf_counter() - started, commit=commit, image_sets=image_sets,
                 diverged=diverged)
    return 0


def record_flags(train_argv: Sequence[str], arm: Arm, seed: int, lmbda: float, folder: Path) -> list[str]:
    """What identifies a run for a rerun: its last stage's flags and the arm's flags as given (every stage)."""
    return [*run_flags(train_argv, arm, seed, lmbda, folder), *arm.flags]


def _job(out_dir: Path, train_argv: list[str], arm: Arm, seed: int, lmbda: float,
         start: Path | None) -> tuple[list[list[str]], Path, list[str]] | None:
    """The training job of one run, or None where there is nothing to train: a finished run (trained with these
    flags, every stage), a run that diverged with these flags, or one whose starting arm diverged (recorded so)."""
    from common.checkpoint import atomic_write_text
    from common.train.engine import check_finished_run
    from common.train.options import parse_config

    folder = run_dir(out_dir, arm.name, seed, lmbda)
    flags = record_flags(train_argv, arm, seed, lmbda, folder)
    record = diverged_record(folder)
    if record is not None:
        check_diverged_run(folder, record, flags)
        print(f"{folder}: diverged run found, kept as a result")
        return None
    if finished(folder):
        for stage, where in zip(arm.stages, stage_dirs(folder, arm)):
            check_finished_run(where, parse_config(stage_flags(train_argv, stage, seed, lmbda, where)))
        print(f"{folder}: finished run found, skipped")
        return None
    if arm.after:
        start = run_dir(out_dir, arm.after, seed, lmbda) / "last.pt"
        if diverged_record(start.parent) is not None:
            folder.mkdir(parents=True, exist_ok=True)
            message = f"not trained: it starts from {arm.after}, whose run diverged"
            atomic_write_text(folder / DIVERGED, json.dumps({"flags": flags, "message": message}, indent=2) + "\n")
            print(f"{folder}: {message}")
            return None
    return train_command(train_argv, arm, seed, lmbda, folder, start), folder, flags


def _check_train_flags(train_argv: list[str], arms: Sequence[Arm]) -> list[Path]:
    """Parse each arm's full training command line and find its data now, so a mistake fails before hours of
    training rather than inside the first run; returns the validation images."""
    from common.data import build_datasets
    from common.train.options import build_parser as train_parser

    for arm in arms:
        # An arm is an optimizer setting: the optimizer flags are its own, the others are set per run.
        reserved = [flag for flag in arm.flags if flag.split("=")[0] in _RESERVED
                    and flag.split("=")[0] not in ("--optimizer", "--use_balanced")]
        if reserved:
            raise UserError(f"--arm {arm.name}: {', '.join(reserved)} are set per run by the comparison")
        for stage in arm.stages:
            parsed = train_parser().parse_args([*train_argv, *stage])
    _, validation = build_datasets(parsed, report=False)
    return list(validation.files)


def describe_image_sets(validation: Sequence[Path], test: Sequence[Path]) -> dict:
    """Names and SHA-256 of the validation and test images, and the test images whose content validation also holds."""
    import hashlib

    def entries(paths: Sequence[Path]) -> list[dict]:
        return [{"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
                for path in paths]

    sets = {"validation": entries(validation), "test": entries(test)}
    seen = {entry["sha256"] for entry in sets["validation"]}
    sets["validation_and_test_share"] = [entry["file"] for entry in sets["test"] if entry["sha256"] in seen]
    return sets


def _eval_images(args, train_argv: list[str]) -> tuple[list[Path], Path]:
    from common.train.options import build_parser as train_parser

    test_dataset = train_parser().parse_args(train_argv).test_dataset
    if args.eval_dataset or test_dataset:
        root = Path(args.eval_dataset or test_dataset)
    else:
        from common.data.samples import sample_dirs

        root = sample_dirs()[1]
    return list_images(root), root


def _start(args, seed: int, lmbda: float) -> Path | None:
    if args.start_checkpoint:
        path = Path(args.start_checkpoint)
    elif args.start_from:
        path = Path(args.start_from) / f"seed{seed}" / f"lambda_{lmbda:g}" / "last.pt"
    else:
        return None
    if not path.is_file():
        hint = " (run the sweep it comes from first)" if args.start_from else ""
        raise UserError(f"starting model not found: {path}{hint}")
    return path


def cli() -> None:
    """The ``lic-compare`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
