"""
SQS and its baselines side by side: same base network, same compressed layers
(the resolved prior-spec sites), same data, same ``K`` and target sparsity, same
writer, same evaluation (the accuracy of the network reloaded from its file).

Methods (keys of :data:`METHODS`):

* ``"rtn"`` -- global magnitude pruning + uniform round-to-nearest, no fine-tune
  (:mod:`~sqs_pyro.baselines.rtn`);
* ``"deep-compression"`` -- prune, fine-tune, k-means, centroid fine-tune
  (:mod:`~sqs_pyro.baselines.deep_compression`);
* ``"dgms"`` -- the DGMS guide trained with the task loss (:mod:`~sqs_pyro.baselines.dgms`);
* ``"sqs-gaussian"`` -- SQS with a plain Gaussian prior (:mod:`~sqs_pyro.baselines.gaussian_prior`);
* ``"sqs"`` -- SQS (:mod:`~sqs_pyro.baselines.sqs`), or a result computed before.

Each method starts from its own deep copy of the base network (the caller's is
never modified), in a fresh Pyro parameter store, with the run's seed.

Example::

    >>> rows, table = run_baselines(cfg, net, base_acc, train, test, info, "cpu")  # doctest: +SKIP
    >>> print(table)                                                              # doctest: +SKIP
"""

import copy
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from sqs_pyro.export import apply_compressed
from sqs_pyro.guides import compressed_weights
from sqs_pyro.run.pipeline import evaluate_posterior

from .common import (
    codebook_dtype,
    common_k,
    compressed_sites,
    export_and_evaluate,
    prior_of,
)
from .deep_compression import deep_compression
from .dgms import train_dgms
from .gaussian_prior import gaussian_prior_config
from .rtn import magnitude_rtn
from .sqs import run_sqs
from .table import format_table, result_stem, write_results

METHODS = {
    "rtn": "magnitude + RTN",
    "deep-compression": "Deep Compression",
    "dgms": "DGMS",
    "sqs-gaussian": "SQS, Gaussian prior",
    "sqs": "SQS",
}

NOTES = {
    "rtn": "global magnitude pruning, then K uniform levels spanning each layer's survivors; no training.",
    "deep-compression": "global magnitude pruning in one shot, fine-tune with the mask fixed (cross-entropy, "
    "AdamW, cosine lr) for {dc_ft} epochs, per-layer k-means on the survivors, centroid fine-tune (codes fixed) "
    "for {dc_c} epochs.",
    "dgms": "GMM with a component pinned at 0 (K nonzero components + the zero one), no gate, soft weights "
    "sum_k phi_k mu_k, task loss only (SQSELBO with kl_weight=0), Adam at the SQS lr for the SQS budget; zero "
    "component initialized on the target fraction of smallest-magnitude weights; export at the target sparsity "
    "(the weights whose zero component is most probable are pruned, the others take their argmax nonzero value).",
    "sqs-gaussian": "prior N(0, sigma_0^2) (spike=False), otherwise the SQS run:",
    "sqs": "spike-and-slab prior,",
    "sqs-common": " SQS guide, {pruning} pruning schedule, kl_weight {kl:g}; greedy MAP export, Bayesian averaging "
    "over {m} networks in brackets.",
}

SPARSITY_TOLERANCE = 0.05  # rows whose achieved sparsity is further from the target get a warning
DEFAULT_RESULTS_DIR = os.path.join("benchmarks", "results")
CAVEAT = ("Fashion-MNIST substitutes for the paper's benchmarks (CIFAR, GLUE, SQuAD are not available offline); "
          "these are not the paper's numbers.")


def fresh_copy(net):
    """A deep copy of ``net`` with every parameter trainable (the caller's network is left alone)."""
    net = copy.deepcopy(net)
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _row(method, k, target, exported, seconds, **extra):
    report = exported.report
    row = {
        "method": method,
        "label": METHODS.get(method, method),
        "K": k,
        "target_sparsity": target,
        "sparsity": report.sparsity,
        "accuracy": exported.accuracy,
        "bma_accuracy": None,
        "paper_cr": report.paper_cr,
        "honest_cr": report.cr_fp32,
        "honest_cr_fp16": report.cr_fp16,
        "model_cr": report.model_cr,
        "file_bytes": report.file_bytes,
        "stored_bytes": report.stored_bytes,
        "bits_per_weight": report.bits_per_weight,
        "path": exported.path,
        "seconds": seconds,
    }
    if exported.entropy_coded_report is not None:
        ec = exported.entropy_coded_report
        row.update(entropy_coded_file_bytes=ec.file_bytes, entropy_coded_honest_cr=ec.cr_fp32,
                   entropy_coded_model_cr=ec.model_cr, entropy_coded_path=exported.entropy_coded_path)
    row.update(extra)
    return row


def row_from_pipeline(result, k, target):
    """
    A row from :func:`sqs_pyro.run.main_job.run_main_job`'s results (or their ``"sqs"``
    part): the SQS run the main job already made, exported by the same writer.
    """
    sqs = result.get("sqs", result)
    seconds = (result.get("seconds") or {}).get("sqs")
    plain = sqs["files"]["plain"]
    report = plain["report"]
    row = {
        "method": "sqs",
        "label": METHODS["sqs"],
        "K": k,
        "target_sparsity": target,
        "sparsity": report["sparsity"],
        "accuracy": plain["reloaded_accuracy"],
        "bma_accuracy": sqs.get("bma_accuracy"),
        "greedy_accuracy": sqs.get("greedy_accuracy"),
        "paper_cr": report["paper_cr"],
        "honest_cr": report["cr_fp32"],
        "honest_cr_fp16": report["cr_fp16"],
        "model_cr": report["model_cr"],
        "file_bytes": plain["bytes"],
        "stored_bytes": report["stored_bytes"],
        "bits_per_weight": report["bits_per_weight"],
        "path": plain["path"],
        "seconds": seconds,
    }
    ec = sqs["files"].get("entropy_coded")
    if ec:
        row.update(entropy_coded_file_bytes=ec["bytes"], entropy_coded_honest_cr=ec["report"]["cr_fp32"],
                   entropy_coded_model_cr=ec["report"]["model_cr"], entropy_coded_path=ec["path"])
    return row


def base_row(net, base_acc):
    """The dense base network: accuracy and the fp32 bytes of its tensors (CR 1 by definition)."""
    fp32 = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in net.state_dict().values())
    return {"method": "base", "label": "base (dense fp32)", "K": None, "target_sparsity": 0.0, "sparsity": 0.0,
            "accuracy": base_acc, "bma_accuracy": None, "paper_cr": 1.0, "honest_cr": 1.0, "model_cr": 1.0,
            "file_bytes": fp32, "seconds": None,
            "notes": "the uncompressed network; file bytes = its fp32 tensors (no file written)."}


class _Run:
    """What every method needs (one object instead of ten arguments)."""

    def __init__(self, cfg, net, train, test, info, device, progress, out_dir, centroid_fraction):
        self.cfg, self.net, self.train, self.test, self.info = cfg, net, train, test, info
        self.device, self.progress, self.out_dir = device, progress, out_dir
        self.centroid_fraction = centroid_fraction
        self.prior = prior_of(cfg)
        self.sites = compressed_sites(net, self.prior)
        self.k = common_k(self.sites)
        self.sparsity = cfg.compress.sparsity
        self.dtype = codebook_dtype(cfg)

    def method_dir(self, method):
        return os.path.join(self.out_dir, method)

    def export(self, method, net, compressed, seconds_start, **extra):
        meta = {"method": method, "arch": self.cfg.model.arch, "dataset": self.info.get("name"),
                "K": self.k, "target_sparsity": self.sparsity, "codebook_dtype": self.cfg.export.codebook_dtype}
        exported = export_and_evaluate(net, compressed, self.test, self.device,
                                       os.path.join(self.method_dir(method), "compressed.safetensors"),
                                       codebook_dtype=self.cfg.export.codebook_dtype, metadata=meta,
                                       entropy_coded=self.cfg.export.entropy_coded)
        return _row(method, self.k, self.sparsity, exported, time.time() - seconds_start, **extra)

    @property
    def train_kwargs(self):
        c = self.cfg
        return dict(epochs=c.compress.epochs, lr=c.compress.lr, batch_size=c.data.batch_size, seed=c.seed,
                    device=self.device, progress=self.progress)

    # -- methods -----------------------------------------------------------------------------
    def rtn(self):
        t0 = time.time()
        net = fresh_copy(self.net)
        compressed = magnitude_rtn(net, self.sites, sparsity=self.sparsity, codebook_dtype=self.dtype)
        return self.export("rtn", net, compressed, t0, notes=NOTES["rtn"])

    def deep_compression(self):
        t0 = time.time()
        net = fresh_copy(self.net)
        kw = self.train_kwargs
        compressed = deep_compression(net, self.sites, self.train, sparsity=self.sparsity,
                                      centroid_fraction=self.centroid_fraction, codebook_dtype=self.dtype, **kw)
        epochs = kw["epochs"]
        notes = NOTES["deep-compression"].format(dc_ft=f"{epochs * (1 - self.centroid_fraction):g}",
                                                 dc_c=f"{epochs * self.centroid_fraction:g}")
        return self.export("deep-compression", net, compressed, t0, notes=notes)

    def dgms(self):
        t0 = time.time()
        model, guide = train_dgms(fresh_copy(self.net), self.prior, self.train, sparsity=self.sparsity,
                                  **self.train_kwargs)
        compressed = guide.hard_assignment(codebook_dtype=self.dtype, sparsity=self.sparsity)
        net = apply_compressed(copy.deepcopy(model.net), compressed)
        return self.export("dgms", net, compressed, t0, notes=NOTES["dgms"])

    def _sqs(self, method, cfg):
        t0 = time.time()
        model, guide, metrics = run_sqs(cfg, fresh_copy(self.net), self.train, self.test, self.device,
                                        out_dir=self.method_dir(method), progress=self.progress)
        return self._sqs_row(method, model, guide, metrics, t0)

    def _sqs_row(self, method, model, guide, metrics, t0):
        compressed, net = compressed_weights(model, guide, codebook_dtype=self.dtype)
        notes = NOTES[method] + self._sqs_common()
        return self.export(method, net, compressed, t0, bma_accuracy=metrics["bma_accuracy"],
                           greedy_accuracy=metrics["greedy_accuracy"], notes=notes)

    def _sqs_common(self):
        c = self.cfg
        return NOTES["sqs-common"].format(pruning=c.compress.pruning, kl=c.compress.kl_weight, m=c.eval.num_samples)

    def sqs_gaussian(self):
        return self._sqs("sqs-gaussian", gaussian_prior_config(self.cfg, self.prior))

    def sqs(self, sqs_result=None):
        if sqs_result is None:
            return self._sqs("sqs", self.cfg.replace_prior(self.prior))
        if isinstance(sqs_result, dict) and "method" in sqs_result:
            return dict(sqs_result)
        if isinstance(sqs_result, dict):
            row = row_from_pipeline(sqs_result, self.k, self.sparsity)
            row["notes"] = NOTES["sqs"] + self._sqs_common()
            return row
        if isinstance(sqs_result, (tuple, list)) and len(sqs_result) == 2:
            model, guide = sqs_result
            t0 = time.time()
            metrics = evaluate_posterior(self.cfg, model, guide, self.test, self.device)
            row = self._sqs_row("sqs", model, guide, metrics, t0)
            row["seconds"] = None  # the compression time is not known here
            return row
        raise TypeError("sqs_result must be None, a row dict, run_main_job's results dict or a (model, guide) pair; "
                        f"got {type(sqs_result).__name__}")


def run_baselines(cfg, net, base_acc, train, test, info, device, progress=True, methods=None, sqs_result=None,
                  *, results_dir=DEFAULT_RESULTS_DIR, centroid_fraction=0.2):
    """
    Run SQS and the baselines on the same base network and write the comparison.

    :param cfg: the :class:`~sqs_pyro.run.config.RunConfig` (``K`` from its prior spec,
        target sparsity ``compress.sparsity``, budget ``compress.epochs``, lr
        ``compress.lr``, batch size, seed, codebook dtype).
    :param net: the **base** network (not one a compression run has trained in
        place); it is deep-copied for every method and never modified.
    :param float base_acc: its test accuracy.
    :param train: training ``TensorDataset``; ``test``: test ``TensorDataset``.
    :param dict info: the data description (``info["name"]`` names the files).
    :param device: where to train and evaluate.
    :param methods: a subset of :data:`METHODS` keys (default: all, in that order).
    :param sqs_result: an SQS result computed before, used instead of running
        SQS again: :func:`~sqs_pyro.run.main_job.run_main_job`'s results dict (or its
        ``"sqs"`` part), a row dict, or a ``(model, guide)`` pair.
    :param results_dir: folder for ``<stem>.json`` / ``<stem>.md`` besides the run
        directory ``cfg.out_dir/baselines`` (``None``: run directory only).
    :param float centroid_fraction: Deep Compression's share of the budget for
        the centroid fine-tune.
    :returns: ``(rows, markdown_table)``; the first row is the dense base network.
    """
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown baseline method(s) {unknown}: choose from {list(METHODS)}")
    device = torch.device(device)
    out_dir = os.path.join(cfg.out_dir, "baselines")
    run = _Run(cfg, net, train, test, info, device, progress, out_dir, centroid_fraction)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    t_start = time.time()
    rows = [base_row(net, base_acc)]
    runners = {"rtn": run.rtn, "deep-compression": run.deep_compression, "dgms": run.dgms,
               "sqs-gaussian": run.sqs_gaussian, "sqs": lambda: run.sqs(sqs_result)}
    for method in methods:
        with pyro.settings.context(module_local_params=True), pyro.get_param_store().scope():
            torch.manual_seed(cfg.seed)
            pyro.set_rng_seed(cfg.seed)
            row = runners[method]()
        if row.get("sparsity") is not None and abs(row["sparsity"] - run.sparsity) > SPARSITY_TOLERANCE:
            row["warning"] = (f"achieved sparsity {row['sparsity']:.1%} is not the target {run.sparsity:.1%}: "
                              "not a like-for-like comparison")
        rows.append(row)
        if progress:
            tqdm.write(f"{row['label']}: accuracy {row['accuracy']:.4f}, sparsity {row['sparsity']:.3f}, "
                       f"file {row['file_bytes']:,} B")
    for name, value in net.state_dict().items():
        if not torch.equal(value, before[name]):
            raise RuntimeError(f"a baseline modified the caller's network at {name}")
    table = format_table(rows)
    train_size = len(train)
    result = {
        "stem": result_stem(info.get("name", cfg.data.dataset), cfg.model.arch, run.k, run.sparsity,
                            train_size if cfg.data.train_subset is not None else None),
        "dataset": info,
        "arch": cfg.model.arch,
        "K": run.k,
        "target_sparsity": run.sparsity,
        "base_accuracy": base_acc,
        "train_size": train_size,
        "test_size": len(test),
        "epochs": cfg.compress.epochs,
        "device": str(device),
        "seconds": time.time() - t_start,
        "methods": methods,
        "caveat": CAVEAT if info.get("name") == "fashion-mnist" else None,
        "config": cfg.to_dict(),
        "rows": rows,
    }
    result["files"] = write_results(result, out_dir, results_dir)
    return rows, table
