"""
Issue 13, finding 6: the same seed gives the same result (bit for bit) whether the base network was trained
in the run or loaded, and whether the run was killed before its first checkpoint or not; and a run
interrupted at random points (injected faults, and ``kill -9`` in a subprocess) and resumed ends exactly
where an uninterrupted run does, with the same log.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from sqs_pyro.run import pipeline, trainer as trainer_module
from sqs_pyro.run.checkpoint import checkpoint_info

from ._tiny_run import assert_same_tensors, cli, tensors_of, write_config

HERE = os.path.dirname(__file__)


class Fault(Exception):
    """An injected crash."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run: its final checkpoint tensors and log."""
    root = tmp_path_factory.mktemp("reference")
    cfg = write_config(root)
    run = root / "run"
    assert cli(["compress", "--config", cfg, "--out", str(run)]) == 0
    return {"cfg": cfg, "run": run, "tensors": tensors_of(run / "checkpoint.pt"), "log": _log(run)}


def _log(run):
    return [json.loads(line) for line in open(run / "log.jsonl")]


def _continue_as_a_user(reference, run):
    """The command a user runs after a crash: ``--resume`` when a checkpoint exists, else the run again."""
    resume = (run / "checkpoint.pt").exists()
    argv = ["compress", "--out", str(run), "--resume"] if resume else \
        ["compress", "--config", reference["cfg"], "--out", str(run)]
    return argv, resume


def _assert_same_as(reference, run):
    assert_same_tensors(reference["tensors"], tensors_of(run / "checkpoint.pt"))
    assert _log(run) == reference["log"]  # nothing lost, nothing written twice


def test_same_result_whether_the_base_is_trained_or_loaded(reference, tmp_path, capsys):
    run = tmp_path / "loaded"
    base = reference["run"] / "base.pt"
    assert cli(["compress", "--config", reference["cfg"], "--out", str(run), "--set",
                f'model.base_checkpoint="{base}"']) == 0
    _assert_same_as(reference, run)
    capsys.readouterr()
    assert cli(["evaluate", "--out", str(reference["run"])]) == 0
    first = capsys.readouterr().out
    assert cli(["evaluate", "--out", str(run)]) == 0
    assert capsys.readouterr().out == first


def test_same_result_when_killed_before_the_first_checkpoint(reference, tmp_path, monkeypatch):
    run = tmp_path / "killed"
    step = trainer_module.SQSTrainer.step

    def crash_at_step_1(self):
        if self.state.step == 1:
            raise Fault("killed")
        return step(self)

    monkeypatch.setattr(trainer_module.SQSTrainer, "step", crash_at_step_1)
    assert cli(["compress", "--config", reference["cfg"], "--out", str(run)]) == 1
    assert (run / "base.pt").exists() and not (run / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert cli(["compress", "--config", reference["cfg"], "--out", str(run)]) == 0  # rerun: base loaded
    _assert_same_as(reference, run)


def _inject(monkeypatch, kind, when):
    """Make the ``when``-th event of ``kind`` raise :class:`Fault`."""
    count = {"n": 0}

    def hit():
        count["n"] += 1
        if count["n"] == when:
            raise Fault(f"{kind} #{when}")

    if kind == "step":
        original = trainer_module.SQSTrainer.step
        monkeypatch.setattr(trainer_module.SQSTrainer, "step", lambda self: (hit(), original(self))[1])
    elif kind == "checkpoint write":  # dies after the new file is written, before it replaces the old one
        import sqs_pyro.io as io_module

        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith("checkpoint.pt"):
                hit()
            return real_replace(src, dst)

        monkeypatch.setattr(io_module.os, "replace", replace)
    elif kind == "base training":
        original = pipeline.train_classifier
        monkeypatch.setattr(pipeline, "train_classifier", lambda *a, **k: (hit(), original(*a, **k))[1])
    elif kind == "log write":
        original = trainer_module.SQSTrainer._log_row
        monkeypatch.setattr(trainer_module.SQSTrainer, "_log_row", lambda self, loss: (hit(), original(self, loss))[1])
    return count


FAULTS = ["step", "checkpoint write", "base training", "log write"]


def test_fault_injection_resume_is_bit_for_bit(reference, tmp_path, monkeypatch):
    """Crash a run at 12 random points (steps, checkpoint writes, base training, log writes), each time
    continue it the way a user would (--resume if a checkpoint exists, else run again), and compare."""
    rng = random.Random(13)
    tried = survived = 0
    for i in range(12):
        kind = FAULTS[i % len(FAULTS)]
        when = {"step": rng.randint(1, 8), "checkpoint write": rng.randint(1, 4), "base training": 1,
                "log write": rng.randint(1, 8)}[kind]
        run = tmp_path / f"fault{i}"
        with monkeypatch.context() as m:
            _inject(m, kind, when)
            assert cli(["compress", "--config", reference["cfg"], "--out", str(run)]) == 1, (kind, when)
        tried += 1
        argv, _ = _continue_as_a_user(reference, run)
        assert cli(argv) == 0, (kind, when)
        _assert_same_as(reference, run)
        assert not any(name.endswith(".tmp") for name in os.listdir(run))
        survived += 1
    assert (tried, survived) == (12, 12)


@pytest.mark.slow
def test_kill_minus_nine_at_random_points(reference, tmp_path):
    """SIGKILL the CLI in a subprocess at random moments (before the base exists, before the first
    checkpoint, between checkpoints), then continue the way a user would and compare bit for bit."""
    rng = random.Random(7)
    script = os.path.join(HERE, "_tiny_run.py")
    env = {**os.environ, "TINY_RUN_STEP_SECONDS": "0.3"}
    tried = survived = 0
    for i, rows in enumerate([None, 0, *rng.sample(range(1, 8), 3)]):  # None: a random moment of start-up
        run = tmp_path / f"kill{i}"
        proc = subprocess.Popen([sys.executable, script, "compress", "--config", reference["cfg"], "--out", str(run),
                                 "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if rows is None:
            time.sleep(rng.uniform(0.5, 3.0))
        else:
            while proc.poll() is None and not ((run / "base.pt").exists() and (run / "log.jsonl").exists()
                                               and len(open(run / "log.jsonl").readlines()) >= rows):
                time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before kill {i}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        tried += 1
        argv, resume = _continue_as_a_user(reference, run)
        assert cli(argv) == 0, (i, resume)
        _assert_same_as(reference, run)
        survived += 1
        print(f"kill {i} at {rows} log rows: resumed={resume}")
    assert (tried, survived) == (5, 5)
