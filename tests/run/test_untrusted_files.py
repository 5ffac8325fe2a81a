"""
Issue 13, finding 1: a crafted pickle at every path a command reads is refused without running; a flipped
byte in a checkpoint's tensor data is refused. The pickle's ``__reduce__`` would create a marker file: the
marker must never appear.
"""

import os
import pathlib
import pickle
import shutil

import pytest
import torch

from sqs_pyro.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from ._tiny_run import cli, finished_run


class Evil:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil(path, marker, kind):
    if kind == "torch.save":
        torch.save({"state_dict": {}, "arch": "tiny-test-cnn", "x": Evil(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"x": Evil(marker)}, f)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished tiny run: base.pt, checkpoint.pt, log, compressed.safetensors, config.toml."""
    return pathlib.Path(finished_run(tmp_path_factory.mktemp("good")))


# (command line with RUN for the run directory and EVIL for the crafted file, file replaced in the run)
CASES = [
    (["train-base", "--config", "RUN/config.toml", "--out", "RUN"], "base.pt"),
    (["compress", "--config", "RUN/config.toml", "--out", "RUN"], "base.pt"),
    (["train-base", "--config", "RUN/config.toml", "--out", "RUN", "--set", "model.base_checkpoint=\"EVIL\""], None),
    (["compress", "--out", "RUN", "--resume"], "checkpoint.pt"),
    (["compress", "--out", "RUN", "--resume"], "base.pt"),
    (["evaluate", "--out", "RUN"], "checkpoint.pt"),
    (["evaluate", "--out", "RUN"], "base.pt"),
    (["export", "--out", "RUN"], "checkpoint.pt"),
    (["export", "--out", "RUN"], "base.pt"),
    (["plot", "gates", "RUN"], "checkpoint.pt"),
    (["plot", "weights", "RUN"], "base.pt"),
    (["plot", "sizes", "RUN"], "compressed.safetensors"),
    (["report", "RUN"], "checkpoint.pt"),
    (["report", "RUN"], "base.pt"),
    (["report", "RUN"], "compressed.safetensors"),
]


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
@pytest.mark.parametrize("argv, target", CASES, ids=[f"{' '.join(a[:2])}-{t}" for a, t in CASES])
def test_crafted_pickle_is_refused_without_running(good_run, tmp_path, capsys, argv, target, kind):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    write_evil(evil, str(marker), kind)
    if target is not None:
        shutil.copy(evil, run / target)
    argv = [a.replace("RUN", str(run)).replace("EVIL", str(evil)) for a in argv]
    code = cli(argv)
    captured = capsys.readouterr()
    assert not marker.exists(), "the pickle ran"
    if argv[0] == "report":  # the report shows each section's error in the page instead of failing
        html = (run / "report.html").read_text()
        assert code == 0 and ("pickle" in html or "safetensors" in html), html[:2000]
    else:
        assert code in (3, 5), captured.err
        assert len(captured.err.strip().splitlines()) == 1, captured.err  # one line, no traceback
        assert "pickle" in captured.err or "safetensors" in captured.err, captured.err


def test_flipped_bytes_in_checkpoint_tensors_are_refused(tmp_path):
    """Finding 1: 64 flipped bytes in a checkpoint's tensor data loaded silently (16 gate values changed)."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 3, "guide": {"rho": torch.randn(1000)}})
    raw = bytearray(path.read_bytes())
    for i in range(64):
        raw[-4 * (i + 1)] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_trusted_old_files_convert(tmp_path):
    """A plain old torch.save state dict converts with weights_only=True; a pickle with code does not."""
    from sqs_pyro.run.checkpoint import convert

    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save({"arch": "small-cnn", "state_dict": {"w": torch.ones(2)}, "test_accuracy": 0.5}, old)
    convert(old, new)
    assert load_checkpoint(new)["state_dict"]["w"].tolist() == [1.0, 1.0]
    from sqs_pyro.run.checkpoint import rng_state, set_rng_state

    torch.save({"step": 4, "rng": rng_state()}, old)  # an old checkpoint: numpy RNG state via the allow-list
    convert(old, new)
    set_rng_state(load_checkpoint(new)["rng"])
    marker = tmp_path / "MARKER"
    write_evil(old, str(marker), "torch.save")
    with pytest.raises(Exception):
        convert(old, new)
    assert not marker.exists()
    assert os.path.exists(new)
