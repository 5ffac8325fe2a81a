"""
Issue 13, finding 5: config validation by type and range for every field, naming the file, the key, the
value and what is allowed; every bad input is one line on stderr and a distinct exit code.
"""

import dataclasses
from typing import Optional

import pytest

from sqs_pyro.run import config as config_module
from sqs_pyro.run.config import CompressConfig, ConfigError, RunConfig

from ._tiny_run import cli, write_config

# (--set assignment, text the one-line error must contain)
BAD_VALUES = [
    ('compress.lr="fast"', "compress.lr = 'fast'"),
    ('compress.epochs="one"', "compress.epochs = 'one'"),
    ('data.batch_size="128"', "data.batch_size = '128'"),
    ("data.batch_size=-5", "data.batch_size = -5"),
    ("compress.lr=-1", "compress.lr = -1"),
    ("compress.epochs=-1", "compress.epochs = -1"),
    ("compress.checkpoint_every=0", "compress.checkpoint_every = 0"),
    ("data.batch_size=0", "data.batch_size = 0"),
    ("data.train_subset=0", "data.train_subset = 0"),
    ("eval.num_samples=0", "eval.num_samples = 0"),
    ("compress.kl_weight=nan", "compress.kl_weight = nan"),
    ("compress.gate_lr=inf", "compress.gate_lr = inf"),
    ("compress.sparsity=1.0", "compress.sparsity = 1.0"),
    ("compress.log_every=1.5", "compress.log_every = 1.5"),
    ("seed=-1", "seed = -1"),
    ("export.entropy_coded=1", "export.entropy_coded = 1"),
    ('model.base_epochs="2"', "model.base_epochs = '2'"),
    ("eval.eval_temperature=0", "eval.eval_temperature = 0"),
    ("compress.nope=1", "nope"),
    ("compress.plug_in='median'", "plug_in"),
    ("data=3", "[data] must be a table"),
    ("device='tpu'", "device"),
]


@pytest.mark.parametrize("assignment, message", BAD_VALUES)
def test_bad_value_is_one_clear_line(tmp_path, capsys, assignment, message):
    assert cli(["compress", "--out", str(tmp_path / "run"), "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "expected" in err or "must be" in err or "one of" in err, err  # says what is allowed
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.parametrize("assignment, message", BAD_VALUES[:10])
def test_bad_value_in_a_file_names_the_file(tmp_path, capsys, assignment, message):
    section, rest = assignment.split(".", 1)
    key, value = rest.split("=", 1)
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    assert cli(["compress", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err


def test_bad_files_and_paths(tmp_path, capsys):
    cases = 0
    # a directory as --config
    assert cli(["compress", "--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    cases += 1
    # a non-UTF-8 config names the file
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[compress]\n# caf\xe9\nlr = 0.1\n".encode("latin-1"))
    assert cli(["compress", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "UTF-8" in err
    cases += 1
    # --out an existing file
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli(["compress", "--out", str(afile)]) == 3
    assert "is an existing file" in capsys.readouterr().err
    assert afile.read_text() == "x"
    cases += 1
    # a base_checkpoint that does not exist is an error, not a new training that creates it
    cfg = write_config(tmp_path)
    missing = tmp_path / "nowhere" / "base.pt"
    assert cli(["compress", "--config", cfg, "--out", str(tmp_path / "r1"), "--set",
                f'model.base_checkpoint="{missing}"']) == 3
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "r1" / "checkpoint.pt").exists()
    cases += 1
    # a directory as base_checkpoint
    assert cli(["train-base", "--config", cfg, "--out", str(tmp_path / "r2"), "--set",
                f'model.base_checkpoint="{tmp_path}"']) == 3
    assert "is a directory" in capsys.readouterr().err
    cases += 1
    # --threads 0
    assert cli(["compress", "--threads", "0", "--out", str(tmp_path / "r3")]) == 2
    assert "--threads" in capsys.readouterr().err
    cases += 1
    assert cases == 6


def test_validation_is_driven_by_the_annotations(monkeypatch):
    """Fields added to a section later (another engineer adds recipe, gates, anchor_lr ...) are checked
    from their type annotation without touching the validator."""

    @dataclasses.dataclass
    class Extended(CompressConfig):
        new_name: str = "x"
        new_flag: bool = False
        new_rate: Optional[float] = None
        new_count: int = 3

    monkeypatch.setitem(config_module._SECTIONS, "compress", Extended)
    ok = RunConfig.from_dict({"compress": {"new_name": "y", "new_rate": 1, "new_flag": True}})
    assert ok.compress.new_rate == 1.0 and isinstance(ok.compress.new_rate, float)
    for bad, text in [({"new_name": 3}, "compress.new_name = 3"), ({"new_flag": "yes"}, "compress.new_flag"),
                      ({"anchor_lr": -1.0}, "compress.anchor_lr = -1.0: must be >0"),
                      ({"new_count": 2.5}, "compress.new_count = 2.5")]:
        with pytest.raises(ConfigError, match=text.replace("[", r"\[").replace(".", r"\.")):
            RunConfig.from_dict({"compress": bad})


def test_smoke_keeps_config_file_values(tmp_path):
    """Finding 3: --smoke silently overrode config-file values; now it sets only keys the file does not set."""
    from sqs_pyro.run.cli import build_parser, load_config

    path = tmp_path / "c.toml"
    path.write_text("[data]\ntrain_subset = 300\n[compress]\ncheckpoint_every = 7\n")
    cfg = load_config(build_parser().parse_args(["--config", str(path), "--smoke", "--out", str(tmp_path / "o")]))
    assert cfg.data.train_subset == 300 and cfg.compress.checkpoint_every == 7  # the file's values
    assert cfg.data.test_subset == 1000 and cfg.eval.num_samples == 3  # smoke fills the rest
    cfg = load_config(build_parser().parse_args(["--config", str(path), "--smoke", "--set", "data.train_subset=50"]))
    assert cfg.data.train_subset == 50  # explicit --set still wins
