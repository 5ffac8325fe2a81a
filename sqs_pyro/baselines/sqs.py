"""
SQS itself as one row of the comparison: :func:`sqs_pyro.run.pipeline.compress`,
:func:`~sqs_pyro.run.pipeline.evaluate_posterior`, and the greedy MAP export through
the same writer as every baseline.

Example::

    >>> import torch
    >>> from sqs_pyro import PriorSpec
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 4}}), Categorical(), 10)
    >>> compressed, greedy = sqs_compressed(model, SQSGuide(model))
    >>> compressed["0.weight"].num_components, torch.equal(greedy[0].weight, compressed["0.weight"].to_dense())
    (4, True)
"""

import dataclasses

import torch

from sqs_pyro.guides import greedy_map, hard_assignment
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


@torch.no_grad()
def sqs_compressed(model, guide, codebook_dtype=torch.float32):
    """
    The greedy MAP export: ``(name -> CompressedTensor, network)``; codebooks
    rounded to ``codebook_dtype`` and the network's weights equal to them.
    """
    compressed = hard_assignment(model, guide, codebook_dtype=codebook_dtype)
    compressed = {
        name: dataclasses.replace(ct, num_components=model.sites[name].settings.num_components)
        for name, ct in compressed.items()
    }
    return compressed, greedy_map(model, guide, codebook_dtype=codebook_dtype)
