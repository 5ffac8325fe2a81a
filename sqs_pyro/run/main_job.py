"""
The main job, ``sqs-pyro`` with no subcommand: base network, SQS compression,
evaluation, export and reload check (the stages of :mod:`sqs_pyro.run.pipeline`),
then the baselines side by side (:mod:`sqs_pyro.baselines`) and one table.

Example::

    >>> from sqs_pyro.run.config import RunConfig, smoke_config
    >>> cfg = smoke_config(RunConfig(out_dir="/tmp/sqs-doc"))  # doctest: +SKIP
    >>> results = run_main_job(cfg)                             # doctest: +SKIP
    >>> print(format_table(results))                            # doctest: +SKIP
"""

import copy
import os
import time

import torch

from ..baselines import format_table as baseline_table
from ..baselines import run_baselines
from .files import CONFIG_NAME, RESULTS_NAME
from .pipeline import (
    base_network,
    check_resume,
    compress,
    evaluate_posterior,
    export_run,
    load_data,
    resolve_device,
)
from .results import write_results
from .table import field, markdown_table


def run_main_job(cfg, resume=False, progress=True, baselines=True):
    """The default job: base model -> SQS -> evaluate -> export -> reload check (-> baselines) -> table."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if resume:
        check_resume(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    cfg.save(os.path.join(cfg.out_dir, CONFIG_NAME))
    t0 = time.time()
    train, test, info = load_data(cfg)
    net, base_acc = base_network(cfg, train, test, info, device, progress)
    base_net = copy.deepcopy(net)  # SQS trains the point parameters (biases, norms) in place
    t_base = time.time()
    model, guide, trainer = compress(cfg, net, train, device, resume=resume, progress=progress)
    t_sqs = time.time()
    metrics = evaluate_posterior(cfg, model, guide, test, device)
    exported = export_run(cfg, model, guide, test, device)
    results = {"dataset": info, "arch": cfg.model.arch, "base_accuracy": base_acc, "sqs": {**metrics, **exported},
               "seconds": {"base": t_base - t0, "sqs": t_sqs - t_base}, "run_identity": model.run_identity}
    if baselines:
        rows, _ = run_baselines(cfg, base_net, base_acc, train, test, info, device, progress=progress,
                                sqs_result=results)
        results["table_rows"] = rows
    results["seconds"]["total"] = time.time() - t0
    write_main_results(cfg, results)
    return results


#: the table of a main job run without the baselines (:func:`~sqs_pyro.run.table.markdown_table`)
SQS_COLUMNS = (
    ("method", field("method")),
    ("sparsity", field("sparsity", "{:.3f}")),
    ("greedy acc", field("greedy_accuracy", "{:.4f}")),
    ("BMA acc", field("bma_accuracy", "{:.4f}")),
    ("reloaded acc", field("reloaded_accuracy", "{:.4f}")),
    ("file bytes", field("bytes")),
    ("honest CR (compressed layers)", lambda row: f"{row['cr_fp32']:.2f} ({row['model_cr']:.2f} whole file)"),
)


def format_table(results):
    """One Markdown table of a main-job result (SQS and, when present, the baselines)."""
    head = f"base {results['arch']} on {results['dataset']['name']}: accuracy {results['base_accuracy']:.4f}\n\n"
    rows = results.get("table_rows")
    if rows:
        return head + baseline_table(rows)
    sqs = results["sqs"]
    plain = sqs["files"]["plain"]
    row = {"method": "SQS", "sparsity": sqs["sparsity"], "greedy_accuracy": sqs["greedy_accuracy"],
           "bma_accuracy": sqs["bma_accuracy"], "reloaded_accuracy": plain["reloaded_accuracy"], "bytes": plain["bytes"],
           "cr_fp32": plain["report"]["cr_fp32"], "model_cr": plain["report"]["model_cr"]}
    return head + markdown_table([row], SQS_COLUMNS)


def write_main_results(cfg, results):
    """Write a main-job result to the run directory's ``results.json`` (:func:`~sqs_pyro.run.results.write_results`)."""
    write_results(results, None, RESULTS_NAME[: -len(".json")], [cfg.out_dir])
