"""
SQS itself as one row of the comparison: :func:`sqs_pyro.run.pipeline.compress`
and :func:`~sqs_pyro.run.pipeline.evaluate_posterior` (the run's own verbs), then the
greedy MAP export (:func:`sqs_pyro.guides.compressed_weights`) through the same
writer as every baseline.

Example::

    >>> from sqs_pyro.run.config import RunConfig, smoke_config
    >>> cfg = smoke_config(RunConfig())
    >>> model, guide, metrics = run_sqs(cfg, net, train, test, "cpu", out_dir="/tmp/sqs-row")  # doctest: +SKIP
"""

import dataclasses

from sqs_pyro.run.pipeline import compress, evaluate_posterior


def run_sqs(cfg, net, train, test, device, *, out_dir, progress=False):
    """
    Compress ``net`` (pass a copy: it becomes the model's network) with the run's
    config, its checkpoint and log written to ``out_dir``, and evaluate greedy MAP
    and Bayesian averaging.

    :returns: ``(model, guide, metrics)``, metrics as from
        :func:`~sqs_pyro.run.pipeline.evaluate_posterior`.
    """
    cfg = dataclasses.replace(cfg, out_dir=out_dir)
    model, guide, _ = compress(cfg, net, train, device, progress=progress)
    metrics = evaluate_posterior(cfg, model, guide, test, device)
    return model, guide, metrics
