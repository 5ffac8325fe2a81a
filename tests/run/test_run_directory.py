"""
Issue 13, finding 3 (and the foreign-file part of 6): run directories have an owner and an identity.
A second writer fails at once naming the holder; a stale lock is taken over; ``--resume`` with a changed
config fails naming the keys; read-only commands write nothing; another run's files are refused.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from sqs_pyro.errors import RunDirBusyError, RunMismatchError
from sqs_pyro.run.lock import LOCK_NAME, RunDirLock

from ._tiny_run import cli, finished_run, write_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return pathlib.Path(finished_run(tmp_path_factory.mktemp("finished")))


def _copy(run, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _snapshot(directory):
    return {p: (os.path.getmtime(os.path.join(directory, p)), os.path.getsize(os.path.join(directory, p)))
            for p in os.listdir(directory)}


def test_second_writer_fails_at_once_naming_the_holder(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "run"
    with RunDirLock(out, "compress"):
        assert cli(["compress", "--config", cfg, "--out", str(out)]) == 4
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and socket.gethostname() in err and "in use" in err, err
    assert not (out / "config.toml").exists() and not (out / "log.jsonl").exists()  # nothing was written


def test_lock_held_by_another_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from sqs_pyro.run.lock import RunDirLock\n"
                               f"l = RunDirLock({str(tmp_path)!r}, 'run').acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusyError, match=f"pid {holder.pid} on host"):
            RunDirLock(tmp_path, "compress").acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(tmp_path, "compress"):  # the kernel released the dead holder's lock: taken over
        pass


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": socket.gethostname(), "command": "compress"}))
    with RunDirLock(tmp_path, "compress") as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    assert lock._fd is None


@pytest.mark.parametrize("change, key", [(["--sparsity", "0.9"], "compress.sparsity"),
                                         (["-K", "8"], "prior._default.num_components"),
                                         (["--set", "compress.lr=0.01"], "compress.lr")])
def test_resume_with_a_changed_config_names_the_keys(finished, tmp_path, capsys, change, key):
    run = _copy(finished, tmp_path)
    before = (run / "config.toml").read_text()
    assert cli(["compress", "--out", str(run), "--resume", *change]) == 5
    err = capsys.readouterr().err
    assert key in err and "stored" in err and len(err.strip().splitlines()) == 1, err
    assert "size mismatch" not in err
    assert (run / "config.toml").read_text() == before  # not rewritten


def test_resume_with_an_allowed_change_works(finished, tmp_path):
    run = _copy(finished, tmp_path)
    assert cli(["compress", "--out", str(run), "--resume", "--set", "compress.log_every=5"]) == 0


def test_read_only_commands_write_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    assert cli(["evaluate", "--out", str(run)]) == 0
    assert _snapshot(run) == before  # no config.toml rewrite, no lock file, nothing new
    out = tmp_path / "figs"
    assert cli(["plot", "gates", str(run), "--out", str(out)]) == 0
    assert cli(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert _snapshot(run) == before


def test_foreign_compressed_file_is_refused(finished, tmp_path, capsys):
    """Finding 6: another run's compressed.safetensors dropped into a run directory was accepted silently."""
    other_cfg = write_config(tmp_path / "other", seed=1)
    other = tmp_path / "other" / "run"
    assert cli(["compress", "--config", other_cfg, "--out", str(other)]) == 0
    assert cli(["export", "--out", str(other)]) == 0
    run = _copy(finished, tmp_path)
    shutil.copy(other / "compressed.safetensors", run / "compressed.safetensors")
    assert cli(["plot", "sizes", str(run)]) == 5
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "seed" in err, err
    from sqs_pyro.analysis.run_dir import RunDir

    with pytest.raises(RunMismatchError):
        RunDir(run).size_report()
    assert cli(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0  # the report says so in the page
    assert "belongs to another run" in (tmp_path / "r.html").read_text()
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")  # and another run's checkpoint
    assert cli(["evaluate", "--out", str(run)]) == 5
    assert "belongs to another run" in capsys.readouterr().err


def test_edited_config_after_the_run_is_detected(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    text = (run / "config.toml").read_text().replace("sparsity = 0.5", "sparsity = 0.75")
    (run / "config.toml").write_text(text)
    assert cli(["evaluate", "--out", str(run)]) == 5
    assert "compress.sparsity" in capsys.readouterr().err


def test_run_identity_is_stored_everywhere(finished):
    from sqs_pyro.run.checkpoint import checkpoint_info
    from sqs_pyro.export import read_manifest

    ident = checkpoint_info(finished / "checkpoint.pt", "identity")
    assert len(ident["config_sha256"]) == 64 and len(ident["base_sha256"]) == 64
    assert read_manifest(finished / "compressed.safetensors")["metadata"]["run_identity"] == ident


def test_two_compress_runs_on_one_directory(tmp_path, capsys):
    """Finding 3: two runs on one --out both exited 0 and wrote every log row twice."""
    cfg = write_config(tmp_path)
    out = tmp_path / "run"
    script = os.path.join(os.path.dirname(__file__), "_tiny_run.py")
    first = subprocess.Popen([sys.executable, script, "compress", "--config", cfg, "--out", str(out), "--no-progress"],
                             env={**os.environ, "TINY_RUN_STEP_SECONDS": "1.0"}, stderr=subprocess.PIPE, text=True)
    import sqs_pyro.run.pipeline  # noqa: F401 - imported before the race, so that the second run is quick

    while first.poll() is None and not (out / "log.jsonl").exists():
        time.sleep(0.02)
    assert first.poll() is None
    assert cli(["compress", "--config", cfg, "--out", str(out), "--sparsity", "0.9"]) == 4
    assert f"pid {first.pid}" in capsys.readouterr().err
    assert first.wait() == 0, first.stderr.read()
    steps = [json.loads(line)["step"] for line in open(out / "log.jsonl")]
    assert steps == list(range(1, 9))  # every row once
    assert "sparsity = 0.5" in (out / "config.toml").read_text()
