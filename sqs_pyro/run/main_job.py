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


def format_table(results):
    """One Markdown table of a main-job result (SQS and, when present, the baselines)."""
    rows = results.get("table_rows")
    if rows:
        head = f"base {results['arch']} on {results['dataset']['name']}: accuracy {results['base_accuracy']:.4f}\n\n"
        return head + baseline_table(rows)
    sqs = results["sqs"]
    plain = sqs["files"]["plain"]
    report = plain["report"]
    lines = [
        f"base {results['arch']} on {results['dataset']['name']}: accuracy {results['base_accuracy']:.4f}",
        "",
        "| method | sparsity | greedy acc | BMA acc | reloaded acc | file bytes | honest CR (compressed layers) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| SQS | {sqs['sparsity']:.3f} | {sqs['greedy_accuracy']:.4f} | {sqs['bma_accuracy']:.4f} | "
        f"{plain['reloaded_accuracy']:.4f} | {plain['bytes']} | {report['cr_fp32']:.2f} ({report['model_cr']:.2f} whole file) |",
    ]
    return "\n".join(lines)


def write_main_results(cfg, results):
    """Write a main-job result to the run directory's ``results.json`` (:func:`~sqs_pyro.run.results.write_results`)."""
    write_results(results, None, RESULTS_NAME[: -len(".json")], [cfg.out_dir])
