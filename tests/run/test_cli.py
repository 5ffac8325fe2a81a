import json
import tomllib

import pytest

from sqs_pyro import PriorSpec
from sqs_pyro.run.cli import build_parser, load_config, main
from sqs_pyro.run.config import RunConfig


def _cfg(argv):
    return load_config(build_parser().parse_args(argv))


def test_flags_and_overrides_make_the_effective_config():
    cfg = _cfg(["compress", "--out", "runs/x", "-K", "8", "--sparsity", "0.75", "--set", "compress.lr=0.01"])
    assert cfg.out_dir == "runs/x"
    assert cfg.compress.sparsity == 0.75 and cfg.compress.lr == 0.01
    assert cfg.prior.to_dict()["_default"]["num_components"] == 8
    assert cfg.prior.to_dict()["classifier.4"] is None  # the small CNN's output layer stays dense


def test_resnet_default_prior_compresses_every_conv():
    assert _cfg(["--model", "resnet18"]).prior == PriorSpec({"type:Conv2d": {"num_components": 16}})


def test_config_file_round_trip(tmp_path):
    cfg = _cfg(["--smoke", "--out", str(tmp_path / "run")])
    path = tmp_path / "cfg.toml"
    cfg.save(path)
    assert RunConfig.from_file(path) == cfg
    assert tomllib.loads(path.read_text())["prior"]["classifier.4"] == "dense"
    assert _cfg(["--config", str(path)]) == cfg


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "compress.sparsity=1.5"], "sparsity"),
        (["--set", "compress.nope=1"], "nope"),
        (["--set", "prior._default.slab='gauss'"], "slab"),
        (["--set", "compress.plug_in='median'"], "plug_in"),
        (["--config", "/does/not/exist.toml"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv + ["--out", "/tmp/unused"]) == 2
    assert message in capsys.readouterr().err


def test_bad_toml_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[compress\nlr = 1")
    assert main(["--config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_smoke_main_job_end_to_end(tmp_path, capsys, monkeypatch):
    """The README's main command in its --smoke size: base model, SQS, evaluation, export, reload, table."""
    monkeypatch.chdir(tmp_path)  # benchmarks/results/ is written relative to the working directory
    out = tmp_path / "smoke"
    assert main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| SQS" in table
    results = json.loads((out / "results.json").read_text())
    sqs = results["sqs"]
    for kind, f in sqs["files"].items():
        assert f["reloaded_accuracy"] == sqs["greedy_accuracy_rounded_codebook"], kind
        assert f["bytes"] == (out / f["path"].rsplit("/", 1)[-1]).stat().st_size
    assert (out / "config.toml").exists() and (out / "log.jsonl").exists()
    assert list((tmp_path / "benchmarks" / "results").glob("baselines_*.md"))


def test_recipe_flag_selects_the_preset():
    assert _cfg(["compress", "--recipe", "paper"]).compress.resolved().score == "rho"
    assert _cfg(["compress"]).compress.resolved().score == "anchor"


@pytest.mark.parametrize("argv", [
    ["--smoke", "--out", "runs/x", "compress", "-K", "8"],
    ["compress", "--smoke", "--out", "runs/x", "-K", "8"],
    ["--smoke", "compress", "--out", "runs/x", "-K", "8"],
])
def test_run_flags_count_the_same_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.command == "compress" and args.smoke and args.out == "runs/x" and args.num_components == 8
    assert _cfg(argv).out_dir == "runs/x"


def test_set_before_and_after_the_subcommand_are_both_applied_in_order():
    cfg = _cfg(["--set", "compress.lr=0.01", "--set", "compress.sparsity=0.6", "compress",
                "--set", "compress.sparsity=0.7"])
    assert cfg.compress.lr == 0.01 and cfg.compress.sparsity == 0.7


def test_a_run_flag_twice_with_different_values_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--out", "a", "compress", "--out", "b"])
    assert e.value.code == 2 and "--out given twice" in capsys.readouterr().err


def test_run_flags_before_a_command_with_its_own_flags_are_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--out", "x.html", "report", "runs/default"])
    assert e.value.code == 2 and "--out given before 'report'" in capsys.readouterr().err
    args = build_parser().parse_args(["--debug", "report", "runs/default", "--out", "x.html"])
    assert args.debug and args.out == "x.html"


@pytest.mark.parametrize("verb", ["run", "train-base", "compress", "evaluate", "export", "baselines"])
def test_out_help_says_what_it_is_for_each_verb(verb, capsys):
    from sqs_pyro.run.cli import OUT_HELP

    with pytest.raises(SystemExit):
        build_parser().parse_args([verb, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert " ".join(OUT_HELP[verb].split()) in help_text
