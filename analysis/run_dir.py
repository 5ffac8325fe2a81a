"""
Read a compression run's directory for analysis: its config, log, results,
compressed file and, when asked, the fitted model and guide.

The layout is the one :mod:`sqs_pyro.run.pipeline` writes (``config.toml``,
``base.pt``, ``checkpoint.pt``, ``log.jsonl``, ``compressed.safetensors``,
``results.json``); :class:`RunDir` returns ``None`` for a missing piece so that
reports can say what is missing instead of failing.

Example::

    >>> run = RunDir("runs/default")            # doctest: +SKIP
    >>> run.results()["sqs"]["greedy_accuracy"]  # doctest: +SKIP
    0.9012
    >>> model, guide, data = run.load()          # doctest: +SKIP
"""

import json
import os
import pathlib

from sqs_pyro.errors import RunMismatchError
from sqs_pyro.export import read_manifest, size_report
from sqs_pyro.run import pipeline
from sqs_pyro.run.checkpoint import checkpoint_info
from sqs_pyro.run.config import RunConfig, default_prior_for
from sqs_pyro.run.files import BASE_NAME
from sqs_pyro.run.identity import check_identity, run_identity

from .plots import load_log

__all__ = ["DIAGNOSTICS_NAME", "RunDir"]

#: Where :func:`sqs_pyro.analysis.report.write_report` keeps computed diagnostics.
DIAGNOSTICS_NAME = "diagnostics.json"


class RunDir:
    """A run directory; every accessor returns ``None`` when its file is missing."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"run directory {self.path} does not exist")

    def file(self, name):
        """``path / name`` if it exists, else ``None``."""
        p = self.path / name
        return p if p.exists() else None

    @property
    def config_path(self):
        return self.file("config.toml")

    @property
    def log_path(self):
        return self.file("log.jsonl")

    @property
    def export_path(self):
        return self.file("compressed.safetensors")

    @property
    def export_ec_path(self):
        return self.file("compressed.ec.safetensors")

    @property
    def checkpoint_path(self):
        return self.file("checkpoint.pt")

    def config(self):
        """The run's :class:`~sqs_pyro.run.config.RunConfig` (``out_dir`` set to this directory)."""
        if self.config_path is None:
            return None
        cfg = RunConfig.from_file(self.config_path)
        return cfg.override([f"out_dir={json.dumps(str(self.path))}"])

    def log(self):
        """Rows of ``log.jsonl`` (a torn last line is skipped)."""
        return None if self.log_path is None else load_log(self.log_path)

    def results(self):
        p = self.file("results.json")
        return None if p is None else json.loads(p.read_text())

    def diagnostics(self):
        p = self.file(DIAGNOSTICS_NAME)
        return None if p is None else json.loads(p.read_text())

    def identity(self):
        """The run identity this directory's files must carry: the checkpoint's (checked against
        ``config.toml``), else that of ``results.json``, else the config's alone; ``None`` if none is known.
        A checkpoint written with another config is a :class:`~sqs_pyro.errors.RunMismatchError`."""
        cfg = self.config()
        own = run_identity(cfg) if cfg is not None else None
        found = checkpoint_info(os.fspath(self.checkpoint_path), "identity") if self.checkpoint_path else None
        if found is None:
            found = (self.results() or {}).get("run_identity")
        check_identity(found, own, f"the checkpoint/results in {self.path}",
                       hint="config.toml was changed after the run, or the files come from another run")
        return found or own

    def size_report(self, entropy_coded=False):
        """:func:`~sqs_pyro.export.size_report` of the compressed (or entropy-coded) file, after checking
        that the file was written by this run (its ``run_identity`` metadata)."""
        path = self.export_ec_path if entropy_coded else self.export_path
        if path is None:
            return None
        own = self.identity()
        found = read_manifest(os.fspath(path))["metadata"].get("run_identity")
        if own is not None and found is None:
            raise RunMismatchError(f"{path} carries no run identity: it was not exported by this run; export again")
        check_identity(found, own, os.fspath(path), hint="export this run again (sqs-pyro export --out RUN_DIR)")
        return size_report(os.fspath(path))

    def num_components(self):
        """``K`` of the run's default prior (None if the config does not say)."""
        cfg = self.config()
        prior = cfg.prior.to_dict() if cfg and cfg.prior is not None else {}
        default = prior.get("_default") or {}
        return default.get("num_components")

    def sweep_results(self):
        """
        ``results.json`` of this run and of every run directly below it, each
        with ``K`` (from its config) and ``target_sparsity`` added: the input of
        :func:`~sqs_pyro.analysis.plots.plot_accuracy_vs_k` for a folder of runs.
        """
        out = []
        for d in [self.path, *sorted(p for p in self.path.iterdir() if p.is_dir())]:
            if not (d / "results.json").exists():
                continue
            run = RunDir(d)
            res = dict(run.results())
            cfg = run.config()
            k = run.num_components()
            if k is None:
                manifest = run.size_report()
                ks = {l.num_components for l in manifest.layers.values()} if manifest else set()
                k = ks.pop() if len(ks) == 1 else None
            if k is None:
                continue
            res.setdefault("K", k)
            if cfg is not None:
                res.setdefault("target_sparsity", cfg.compress.sparsity)
            out.append(res)
        return out

    def load(self, device="cpu"):
        """
        Rebuild the fitted model and guide from the config, the base network and
        the checkpoint. Returns ``(model, guide, (train, test, info))``.
        Raises ``FileNotFoundError`` naming what is missing (nothing is retrained).
        """
        import pyro
        import torch


        cfg = self.config()
        if cfg is None:
            raise FileNotFoundError(f"{self.path} has no config.toml")
        base = cfg.model.base_checkpoint or os.path.join(cfg.out_dir, BASE_NAME)
        if not os.path.exists(base):
            raise FileNotFoundError(f"{self.path} has no base network ({base})")
        if self.checkpoint_path is None:
            raise FileNotFoundError(f"{self.path} has no checkpoint.pt: compress first")
        if cfg.prior is None:
            cfg = cfg.replace_prior(default_prior_for(cfg.model.arch))
        pyro.settings.set(module_local_params=True)  # as the trainer: guide parameters live in the guide
        device = torch.device(device)
        train, test, info = pipeline.load_data(cfg)
        net, _ = pipeline.base_network(cfg, train, test, info, device, progress=False, train_if_missing=False)
        model, guide = pipeline.load_compressed_run(cfg, net, len(train), device)
        return model, guide, (train, test, info)
