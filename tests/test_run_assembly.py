"""How a run is assembled: each registry refuses the flags its chosen variant would ignore, models state their
facts (published weights, quality), the sweep's warm start really is Adam, and balanced_rd stays torch-only.

Every case here was a reproduced defect: a traceback, a silently dropped flag or the wrong optimizer.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common.models as models
from common.errors import UserError
from common.assembly import load_model
from common.train.engine import Trainer
from tests.test_engine import image_dirs, train_args  # noqa: F401 - module fixture

ROOT = Path(__file__).resolve().parents[1]


def test_balanced_rd_imports_nothing_but_torch_and_the_standard_library():
    allowed = {"torch", "balanced_rd", *sys.stdlib_module_names}
    for path in sorted((ROOT / "balanced_rd").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("extra, message", [
    (("--gamma", "0.01"), "--gamma is an option of --optimizer balanced, not of --optimizer adam"),
    (("--optimizer", "adam", "--use_balanced"), "--use_balanced conflicts with --optimizer adam"),
    (("--loss_type", "recon", "--lambda", "0.1"), "--lambda is not used with --loss_type recon"),
    (("--loss_type", "mse", "--lambda_bpp", "0.02"), "--lambda_bpp is not used with --loss_type mse"),
    (("--act", "relu", "--enc_t", "3"), "the --enc_\\*/--dec_\\* options belong to --act gdnish, not to --act relu"),
    (("--act", "gdnish", "--act_opt", "width=2"), "--act gdnish takes none"),
])
def test_a_flag_the_chosen_variant_ignores_is_one_line_error(image_dirs, tmp_path, extra, message):  # noqa: F811
    with pytest.raises(UserError, match=message):
        Trainer(train_args(image_dirs, tmp_path, "--steps", "1", *extra))


@pytest.mark.parametrize("model, extra, message", [
    ("hpcm-tiny", ("--act", "relu"), "found no GDN/IGDN layer to replace"),
    ("bmshj2018-factorized-tiny", ("--quality", "3"), "--quality does not apply to bmshj2018-factorized-tiny; drop it"),
])
def test_a_model_option_the_model_lacks_is_refused(image_dirs, tmp_path, model, extra, message):  # noqa: F811
    args = train_args(image_dirs, tmp_path, "--steps", "1", *extra)
    args.model.model = model
    with pytest.raises(UserError, match=message):
        Trainer(args)


def test_gdnish_options_without_act_choose_gdnish_as_seed_003_does(image_dirs, tmp_path):  # noqa: F811
    # Seed 003's train_finetune_npu.py has GDNishLite as its only block: its flags at their default values
    # still mean that block, where they used to give a ReLU model with the options silently dropped.
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "1", "--replace_parts", "encoder",
                                 "--enc_t", "2.0", "--enc_eca", "true"))
    assert trainer.replace_config["act"] == "gdnish" and trainer.replace_config["replace_parts"] == "encoder"


def test_pretrained_weights_of_a_model_that_has_none_is_one_line_error(image_dirs, tmp_path):  # noqa: F811
    # It was a TypeError traceback: build_hpcm_tiny() got an unexpected keyword argument 'quality'.
    args = train_args(image_dirs, tmp_path, "--steps", "1", "--pretrained")
    args.model.model = "hpcm-tiny"
    with pytest.raises(UserError, match="hpcm-tiny has no published weights; pass its weights with --checkpoint"):
        Trainer(args)
    assert models.entry("bmshj2018-factorized").published_weights
    assert not models.entry("bmshj2018-factorized-small").published_weights


def test_a_raw_state_dict_of_a_model_without_quality_loads_with_a_replacement(tmp_path):
    # It was a TypeError traceback in common.export.onnx (--act relu on a raw tiny state dict).
    from common import replace

    replaced = replace.apply_config(models.build("bmshj2018-factorized-tiny"), replace.make_config("all", "relu"))
    torch.save(replaced.state_dict(), tmp_path / "raw.pt")
    model = load_model("bmshj2018-factorized-tiny", checkpoint=str(tmp_path / "raw.pt"),
                       replace=replace.make_config("all", "relu"))
    for name, value in replaced.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_quality_is_read_from_a_state_dict_through_the_registry():
    entry = models.entry("bmshj2018-factorized")
    assert entry.quality_of(models.build("bmshj2018-factorized", quality=7).state_dict()) == 6  # 6-8 share (N, M)
    assert entry.quality_of(models.build("bmshj2018-factorized-tiny").state_dict()) is None
    assert not models.entry("hpcm-tiny").has_quality


def test_eval_help_lists_no_training_flags():
    completed = subprocess.run([sys.executable, "-m", "common.eval", "--help"], capture_output=True, text=True,
                               check=True, cwd=ROOT)
    for flag in ("--train_scope", "--train_igdn", "--unfreeze_all", "--freeze_igdn"):
        assert flag not in completed.stdout
    assert "--replace_parts" in completed.stdout


def test_sweep_warm_start_trains_adam_even_for_a_balanced_sweep(image_dirs, tmp_path):  # noqa: F811
    # It trained with Balanced: --use_balanced overrode the --optimizer adam the sweep appended.
    from baselines.sweep import main

    train, test = image_dirs
    flags = ["--lambdas", "0.01", "--out_dir", str(tmp_path), "--warm_start_steps", "2", "--use_balanced",
             "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
             "--patch_size", "32", "--batch_size", "2", "--steps", "2", "--progress", "false", "--num_workers", "0",
             "--recon_every", "0"]
    main([*flags, "--gamma", "0.01"])
    warm = torch.load(tmp_path / "warm_start" / "last.pt", weights_only=True)
    run = tmp_path / "bmshj2018-factorized-tiny-balanced" / "seed0" / "lambda_0.01"  # the study runner's layout
    swept = torch.load(run / "last.pt", weights_only=True)
    assert warm["args"]["optimizer"] == "adam" and "famo" not in warm["optimizer"]
    assert swept["args"]["optimizer"] == "balanced" and "famo" in swept["optimizer"]

    # A rerun skips the finished runs, but only when they were trained with its flags: the warm start (Adam,
    # whatever --gamma says) is reused, the Balanced run of another γ is refused instead of reported as this one.
    with pytest.raises(UserError, match=r"lambda_0.01 holds a finished run trained with --gamma \[0.01\] \(now \[0.02\]\)"):
        main([*flags, "--gamma", "0.02"])
    assert torch.load(run / "last.pt", weights_only=True)["progress"] == swept["progress"]


@pytest.mark.parametrize("spelling, mode", [("auto", "auto"), ("True", "true"), ("1", "true"), ("yes", "true"),
                                            ("false", "false"), ("0", "false"), ("no", "false")])
def test_amp_is_parsed_once_with_the_boolean_flags_spellings(spelling, mode):
    from common.train.options import build_parser

    assert build_parser().parse_args(["--amp", spelling]).amp == mode


def test_bad_amp_value_is_one_line_error(capsys):
    from common.train.options import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--amp", "maybe"])
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_qat_with_amp_warns_and_without_it_does_not(image_dirs, tmp_path):  # noqa: F811
    with pytest.warns(UserWarning, match="QAT with AMP is not recommended"):
        Trainer(train_args(image_dirs, tmp_path / "amp", "--steps", "1", "--qat", "--amp", "true"))
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="QAT with AMP")
        Trainer(train_args(image_dirs, tmp_path / "fp32", "--steps", "1", "--qat", "--amp", "false"))


def test_resume_without_flags_continues_the_run_as_it_was_configured(image_dirs, tmp_path):  # noqa: F811
    from common.train.options import parse_config

    train, test = image_dirs
    first = ["--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
             "--patch_size", "32", "--batch_size", "2", "--lr", "2e-3", "--use_balanced", "--gamma", "0.01", "0.02",
             "--steps", "2", "--save_dir", str(tmp_path), "--progress", "false", "--num_workers", "0",
             "--recon_every", "0"]
    Trainer(parse_config(first)).fit()
    resumed = parse_config(["--save_dir", str(tmp_path), "--resume", "--steps", "3"])
    assert (resumed.model.model, resumed.schedule.lr, resumed.optim.gamma, resumed.optim.optimizer) == (
        "bmshj2018-factorized-tiny", 2e-3, [0.01, 0.02], "balanced")
    Trainer(resumed).fit()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["progress"]["step"] == 3
    with pytest.raises(UserError, match="gamma"):  # a recorded list flag may not change either
        Trainer(parse_config(["--save_dir", str(tmp_path), "--resume", "--gamma", "0.05"]))


def test_typed_config_defaults_are_the_flags_defaults():
    from common.train.config import TrainConfig
    from common.train.options import build_parser

    assert TrainConfig().flat() == vars(build_parser().parse_args([]))


def test_config_round_trips_through_its_flat_record_and_refuses_unknown_options():
    from common.train.config import TrainConfig
    from common.train.options import parse_config

    config = parse_config(["--lambda", "0.0067", "--use_balanced", "--gamma", "0.01", "0.02", "--act", "relu"])
    assert TrainConfig.from_flat(config.flat()) == config
    assert (config.loss.lmbda, config.optim.gamma, config.replace.act) == (0.0067, [0.01, 0.02], "relu")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_flat({"lamda": 0.1})


def test_trainer_takes_a_typed_config(image_dirs, tmp_path):  # noqa: F811
    import argparse

    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(argparse.Namespace(model="bmshj2018-factorized-tiny"))


def test_the_official_hpcm_train_flags_are_accepted(image_dirs, tmp_path):  # noqa: F811
    # python train.py --model_name HPCM_Base -e E -lr LR -n N --lambda L -bs B --test-batch-size 1
    #   --save_path P --clip_max_norm C (the official script; here with a tiny model and a 1-step run)
    from common.train.options import parse_config

    train, test = image_dirs
    config = parse_config(["--model_name", "HPCM_Base", "-tr_d", str(train), "-te_d", str(test), "-e", "1",
                           "-lr", "5e-5", "-n", "0", "--lambda", "0.0067", "-bs", "2", "--test-batch-size", "1",
                           "--save_path", str(tmp_path), "--clip_max_norm", "0.5", "--aux-learning-rate", "2e-3"])
    assert (config.model.model, config.schedule.epochs, config.schedule.lr, config.data.num_workers,
            config.loss.lmbda, config.schedule.batch_size, config.output.save_dir, config.schedule.max_grad_norm,
            config.optim.eb_aux_lr) == ("hpcm-base", 1, 5e-5, 0, 0.0067, 2, str(tmp_path), 0.5, 2e-3)
    config.model.model = "hpcm-tiny"  # HPCM-Base is too large for a test; the flags are what is checked
    config.data.patch_size, config.schedule.steps, config.output.progress = 64, 1, False
    Trainer(config).fit()
    assert (tmp_path / "last.pt").is_file()
    with pytest.raises(SystemExit):
        parse_config(["--test-batch-size", "8"])


def test_recon_subdir_names_the_reconstruction_folder_as_in_seed_001(image_dirs, tmp_path):  # noqa: F811
    Trainer(train_args(image_dirs, tmp_path, "--steps", "1", "--recon_subdir", "recon_ft_custom")).fit()
    assert (tmp_path / "recon_ft_custom" / "origin").is_dir() and not (tmp_path / "recon").exists()
    with pytest.raises(UserError, match="--recon_dir and --recon_subdir"):
        Trainer(train_args(image_dirs, tmp_path / "b", "--recon_subdir", "r", "--recon_dir", str(tmp_path / "c")))
