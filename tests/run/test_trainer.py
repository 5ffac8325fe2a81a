import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch

from sqs_pyro.run.checkpoint import CheckpointError, load_checkpoint
from sqs_pyro.run.config import CompressConfig
from sqs_pyro.guides import SQSGuide
from sqs_pyro.models import Categorical, SQSModel
from sqs_pyro.run.trainer import NonFiniteLossError, SQSTrainer, TensorData

HERE = os.path.dirname(__file__)


def make_problem(seed=0, n=256):
    """A small classifier and data, identical for a given seed."""
    pyro.settings.set(module_local_params=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=n)
    return model, SQSGuide(model), TensorData(x, y)


def make_trainer(out_dir, seed=0, **cfg):
    model, guide, data = make_problem(seed)
    options = dict(epochs=2.0, lr=1e-2, gate_lr=1e-2, kl_weight=1e-3, sparsity=0.5, prune_start=0.2,
                   prune_end=0.6, checkpoint_every=4, log_every=2)
    options.update(cfg)
    return SQSTrainer(model, guide, data, CompressConfig(**options), out_dir=str(out_dir), batch_size=32,
                      seed=seed, progress=False)


def assert_same_state(a, b):
    sa, sb = a.guide.state_dict(), b.guide.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for k, v in a.model.net.state_dict().items():
        assert torch.equal(v, b.model.net.state_dict()[k]), k


def test_cubic_schedule_reaches_target_and_logs(tmp_path):
    trainer = make_trainer(tmp_path)
    state = trainer.run()
    assert state.step == trainer.total_steps == 16
    assert trainer.mask_sparsity() == pytest.approx(0.5, abs=0.01)
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows] == list(range(2, 17, 2))
    assert set(rows[0]) >= {"loss", "data", "kl_total", "kl", "sparsity", "target_sparsity"}
    assert rows[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_stop_ends_the_run_at_its_step_logged_and_checkpointed(tmp_path):
    asked = []

    def stop(trainer):
        asked.append(trainer.state.step)
        if trainer.state.step == 5:
            for group in trainer.optimizer.param_groups:  # what a plateau rule does
                group["base_lr"] *= 0.5
        return trainer.state.step == 7

    trainer = make_trainer(tmp_path)
    base = [g["base_lr"] for g in trainer.optimizer.param_groups]
    state = trainer.run(stop=stop)
    assert state.step == 7 and asked == list(range(1, 8)) and trainer.total_steps == 16
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.5 * b * trainer.lr_factor(6)
                                                                               for b in base])
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows] == [2, 4, 6, 7]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 7
    # asked at the last step too
    last = make_trainer(tmp_path / "last")
    assert last.run(stop=lambda t: t.state.step == t.total_steps).step == 16


def test_resume_reaches_the_same_result(tmp_path):
    full = make_trainer(tmp_path / "full")
    full.run()
    part = make_trainer(tmp_path / "part")
    for _ in range(9):  # "crash" after step 9: the last checkpoint is step 8
        part.step()
        if part.state.step % 4 == 0:
            part.save()
    resumed = make_trainer(tmp_path / "part")
    resumed.run(resume=True)
    assert resumed.state.step == full.state.step
    assert_same_state(full, resumed)
    rows = [json.loads(line)["step"] for line in open(tmp_path / "part" / "log.jsonl")]
    assert rows == sorted(set(rows))


def test_resume_after_kill_minus_nine(tmp_path):
    out = tmp_path / "killed"
    script = os.path.join(HERE, "trainer_worker.py")
    proc = subprocess.Popen([sys.executable, script, str(out), "slow"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = load_checkpoint(ckpt)["step"]
    assert 4 <= step < 16
    resumed = make_trainer(out)
    resumed.run(resume=True)
    full = make_trainer(tmp_path / "full")
    full.run()
    assert_same_state(full, resumed)


def test_nan_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path)
    bad_x = trainer.data.x.clone()
    trainer.data = TensorData(bad_x, trainer.data.y)
    steps = []
    original = trainer.data.get

    def poisoned(idx):
        steps.append(trainer.state.step)
        x, y = original(idx)
        if trainer.state.step == 6:
            x = x.clone()
            x[0, 0] = float("nan")
        return x, y

    trainer.data.get = poisoned
    with pytest.raises(NonFiniteLossError, match="step 6"):
        trainer.run()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["guide"].values() if v.is_floating_point())


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(CheckpointError, match="without --resume"):
        trainer.run(resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        make_trainer(tmp_path).run(resume=True)


def test_batches_follow_the_data_epoch_order(tmp_path):
    """Data that defines ``epoch_order`` (e.g. length-grouped texts) sets the batches, per (seed, epoch)."""

    class Reversed(TensorData):
        def epoch_order(self, batch_size, generator):
            return torch.randperm(len(self), generator=generator).flip(0)

    model, guide, data = make_problem()
    trainer = SQSTrainer(model, guide, Reversed(data.x, data.y), CompressConfig(epochs=2.0), out_dir=str(tmp_path),
                         batch_size=32, seed=4, progress=False)
    g = torch.Generator().manual_seed(4 * 1_000_003 + 1)
    expected = torch.randperm(256, generator=g).flip(0)
    assert torch.equal(trainer.batch_indices(8), expected[:32])
    assert torch.equal(trainer.batch_indices(9), expected[32:64])


# ---- issue 13, finding 4: the NaN/inf guard -------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(lr=100.0), dict(lr=1e30), dict(lr=1e10, gate_lr=1e10)])
def test_overflow_to_inf_is_caught_and_checkpoints_stay_finite(tmp_path, options):
    """lr 100 ... 1e30 escaped as "Expected parameter scales ... inf"; with checkpoint_every=1 the checkpoint
    was poisoned and resume failed at once."""
    trainer = make_trainer(tmp_path, checkpoint_every=1, **options)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert f"last good checkpoint (step {ckpt['step']})" in str(info.value)
    assert all(torch.isfinite(v).all() for v in ckpt["guide"].values() if v.is_floating_point())
    resumed = make_trainer(tmp_path, checkpoint_every=1)  # the kept checkpoint loads (it used to fail at once)
    resumed.load()
    assert resumed.state.step == ckpt["step"]


def test_nonfinite_parameters_after_a_step_are_caught(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=1)
    step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        out = step(*args, **kwargs)
        if trainer.state.step == 3:
            with torch.no_grad():
                trainer.guide.params_of("0.weight").locs_unconstrained.data[0, 0] = float("inf")
        return out

    trainer.optimizer.step = poisoned_step
    with pytest.raises(NonFiniteLossError, match="parameters became NaN or infinite in the update of step 3"):
        trainer.run()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # written before the bad update, never after


def test_no_checkpoint_is_written_from_nonfinite_state(tmp_path):
    trainer = make_trainer(tmp_path)
    with torch.no_grad():
        next(trainer.guide.parameters()).data.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="not saved"):
        trainer.save()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_message_says_when_no_checkpoint_exists(tmp_path):
    """kl_weight=1e38 promised "the last good checkpoint is kept" when none existed."""
    with pytest.raises(NonFiniteLossError, match="No checkpoint of this run exists yet") as info:
        make_trainer(tmp_path, kl_weight=1e38).run()
    assert "last good checkpoint is kept" not in str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("setting, says", [("compress.kl_weight=1e38", "No checkpoint of this run exists yet"),
                                           ("compress.lr=1e10", "checkpoint"), ("compress.lr=100.0", "checkpoint")])
def test_cli_nonfinite_is_one_line_and_exit_code_6(tmp_path, capsys, setting, says):
    """On the tiny CLI run, lr=1e10 escaped as "Expected parameter scales ... inf" (exit 2), lr=100 and
    kl_weight=1e38 as a NonFiniteLossError traceback."""
    from ._tiny_run import cli, write_config

    cfg = write_config(tmp_path)
    out = tmp_path / "run"
    assert cli(["compress", "--config", cfg, "--out", str(out), "--set", setting, "--set",
                "compress.checkpoint_every=1"]) == 6
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and says in err, err
    if (out / "checkpoint.pt").exists():  # whatever was kept is finite and loads
        ckpt = load_checkpoint(out / "checkpoint.pt")
        assert f"step {ckpt['step']}" in err
        assert all(torch.isfinite(v).all() for v in ckpt["guide"].values() if v.is_floating_point())
