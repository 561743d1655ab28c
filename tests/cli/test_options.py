"""Each option defined once, validated in the library: the CLI's flags come from the option
schemas, and the Python API refuses what the CLI refuses, in the same words, naming the
parameter where the CLI names the flag."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from medscope import api
from medscope.cli import COMMANDS, build_parser, main
from medscope.config import IN_CHANS, Precision, TrainConfig, describe_field
from medscope.options import EvaluateOptions, OptionError, PredictOptions, ServeOptions


def _choices(argv: list[str], dest: str) -> tuple:
    parser = build_parser()
    for action in _subparser(parser, argv)._actions:
        if action.dest == dest:
            return tuple(action.choices)
    raise AssertionError(f"no {dest} in {argv}")


def _subparser(parser, names):
    for name in names:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


def test_precision_choices_are_the_config_schemas_everywhere():
    expected = get_args(Precision)
    assert describe_field("train.precision").choices == expected
    for command in (["train"], ["cv"], ["evaluate"], ["predict"]):
        dest = "opt_train_precision" if command[0] in ("train", "cv") else "precision"
        assert _choices(command, dest) == expected, command


def test_tiling_choices_are_one_constant():
    from medscope.options import AGGREGATIONS, TILE_MODES, TISSUE_MODES

    assert _choices(["predict"], "tiles") == TILE_MODES
    assert _choices(["predict"], "tissue") == TISSUE_MODES
    assert _choices(["predict"], "aggregation") == AGGREGATIONS
    from medscope.slides import aggregate, diagnose

    assert aggregate.AGGREGATIONS is AGGREGATIONS and diagnose.TISSUE_MODES is TISSUE_MODES


def test_in_chans_choices_are_one_constant():
    assert _choices(["models"], "in_chans") == IN_CHANS
    assert _choices(["train"], "opt_data_in_chans") == IN_CHANS
    from medscope.models.registry import create_model

    with pytest.raises(Exception, match=r"in_chans must be one of \(1, 3\), got 2"):
        create_model("simple_cnn", num_classes=2, in_chans=2, img_size=32)


def test_target_accuracy_follows_the_config_rule():
    # <= 1 in the run config, so also for evaluate (the CLI once refused 1)
    assert TrainConfig(target_accuracy=1).target_accuracy == 1
    assert EvaluateOptions.check(target_accuracy=1).target_accuracy == 1
    with pytest.raises(OptionError, match=r"^target_accuracy 1.5: must be at most 1$"):
        EvaluateOptions.check(target_accuracy=1.5)
    with pytest.raises(OptionError, match=r"^target_accuracy 0.0: must be greater than 0$"):
        EvaluateOptions.check(target_accuracy=0.0)


@pytest.mark.parametrize("call, message", [
    (lambda tmp: api.evaluate(tmp / "norun", target_accuracy=1.5),
     "target_accuracy 1.5: must be at most 1"),
    (lambda tmp: api.evaluate_ensemble([tmp / "a", tmp / "b"], tmp / "o", precision="fp8"),
     "precision 'fp8': input should be"),
    (lambda tmp: api.predict(tmp / "norun", [tmp], top_k=0), "top_k 0: must be at least 1"),
    (lambda tmp: api.predict(tmp / "norun", [tmp], abstain_below=2.0),
     "abstain_below 2.0: must be at most 1"),
    (lambda tmp: api.predict(tmp / "norun", [tmp], tiles="always"), "tiles 'always'"),
    (lambda tmp: api.predict(tmp / "norun", [tmp], tissue="always"), "tissue 'always'"),
    (lambda tmp: api.serve([tmp / "norun"], port=70000), "port 70000: must be at most 65535"),
    (lambda tmp: api.create_app([tmp / "norun"], max_upload_mb=0),
     "max_upload_mb 0: must be greater than 0"),
    (lambda tmp: api.synth(tmp / "slides", size=500), "size 500: must be at least 1000"),
    (lambda tmp: api.synth(tmp / "slides", per_class=0), "per_class 0: must be at least 1"),
    (lambda tmp: api.demo(tmp / "demo", per_class=0), "per_class 0: must be at least 1"),
    (lambda tmp: api.data_info(tmp, group_pattern="(unclosed"),
     "group_pattern '(unclosed': not a regular expression"),
    (lambda tmp: api.audit(tmp, group_pattern=""), "group_pattern '': empty pattern"),
    (lambda tmp: api.audit(tmp, phash_distance=40), "phash_distance 40: must be at most 32"),
    (lambda tmp: api.list_models(in_chans=2), "in_chans 2: input should be 1 or 3"),
    (lambda tmp: api.compare([tmp], latency_repeats=0), "latency_repeats 0: must be at least 1"),
])
def test_api_checks_options_before_any_work_naming_the_parameter(tmp_path, call, message):
    before = sorted(tmp_path.iterdir())
    with pytest.raises(OptionError) as err:
        call(tmp_path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["synth", "--size", "500"], "--size 500: must be at least 1000"),
    (["synth", "--seed", "-1"], "--seed -1: must be at least 0"),
    (["predict", "RUN", "x.png", "--top-k", "0"], "--top-k 0: must be at least 1"),
    (["predict", "RUN", "x.png", "--tile-size", "4"], "--tile-size 4: must be at least 8"),
    (["evaluate", "RUN", "--target-accuracy", "2"], "--target-accuracy 2.0: must be at most 1"),
    (["data", "info", ".", "--group-pattern", ""], "--group-pattern '': empty pattern"),
    (["compare", "RUN", "--repeats", "0"], "--repeats 0: must be at least 1"),
])
def test_cli_shows_the_librarys_message_with_its_flag(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a in ("RUN", "x.png") else a for a in argv]
    if argv[0] == "synth":
        argv += ["--out", str(tmp_path / "slides")]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medscope: error: {message}") and "\n" not in err
    assert not (tmp_path / "slides").exists()


def test_under_torchrun_rank_0_alone_prints_a_bad_option(tmp_path, capsys, monkeypatch):
    argv = ["predict", str(tmp_path / "RUN"), str(tmp_path), "--top-k", "0", "-q"]
    for rank, printed in (("1", ""), ("0", "medscope: error: --top-k 0: must be at least 1")):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == printed


def test_flags_carry_the_schemas_defaults_and_help():
    args = build_parser().parse_args(["serve", "RUN"])
    fields = ServeOptions.model_fields
    assert (args.port, args.max_upload_mb, args.cors_origins) == (8000, 20.0, [])
    assert args.flags["cors_origins"] == "--cors-origin"
    args = build_parser().parse_args(["predict", "RUN", "x.png"])
    for name, info in PredictOptions.model_fields.items():
        assert getattr(args, name) == info.default, name
    help_text = _subparser(build_parser(), ["serve"]).format_help()
    assert " ".join(fields["max_upload_mb"].description.split()) in " ".join(help_text.split())


@pytest.mark.parametrize("command", [c.__name__.rsplit(".", 1)[1] for c in COMMANDS])
def test_every_command_has_help(command, capsys):
    name = {"data_info": "data"}.get(command, command)
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([name, "--help"])
    assert done.value.code == 0 and f"usage: medscope {name}" in capsys.readouterr().out


@pytest.mark.slow
def test_the_cli_imports_no_torch():
    code = ("import sys, medscope.cli; medscope.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'medscope.api') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
