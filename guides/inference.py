"""
Using the fitted posterior: greedy MAP export and Bayesian model averaging
(docs/method.md §7).

*Greedy MAP* keeps, for every unpruned weight, the codebook value of its most
probable component, ``mu_{g, argmax_k phi_ik}``, and exact zeros elsewhere: a
sparse network whose nonzeros take ``K`` values per group. This is what is
exported. *Bayesian averaging* draws ``M`` such networks, each unpruned weight
drawing its component from ``phi`` (optionally softened by an evaluation
temperature), and averages their logits.

Example::

    >>> import torch
    >>> from sqs_pyro import PriorSpec
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 4}}), Categorical(), 100)
    >>> guide = SQSGuide(model)
    >>> hard = greedy_map(model, guide)
    >>> len(torch.unique(hard[0].weight)) <= 4
    True
    >>> compressed, net = compressed_weights(model, guide)
    >>> torch.equal(net[0].weight, compressed["0.weight"].to_dense())
    True
    >>> bayesian_average(model, guide, torch.randn(2, 4), num_samples=3).shape
    torch.Size([2, 3])
"""

import contextlib
import copy
import dataclasses

import torch

from sqs_pyro.export import CompressedTensor
from sqs_pyro.soft_quantize import responsibility_logits

PRUNE_RULES = ("posterior", "mask")


def _keep(params, prune):
    if prune not in PRUNE_RULES:
        raise ValueError(f"prune must be one of {PRUNE_RULES}, got {prune!r}")
    keep = params.mask.clone()
    if prune == "posterior":
        keep &= params.gate_probs() >= 0.5
    return keep


@torch.no_grad()
def hard_assignment(model, guide, *, prune="posterior", codebook_dtype=torch.float32):
    """
    The greedy MAP weights of every compressed site as
    :class:`~sqs_pyro.export.CompressedTensor` (codebook, codes, mask).

    Weights the grouping keeps at full precision (``tails="full"``) are stored
    as outliers with their anchor values; positional groupings store group-local
    codes (:attr:`~sqs_pyro.export.CompressedTensor.group_size`).

    :param str prune: ``"posterior"`` (default) prunes the masked weights and
        every weight with ``gamma < 0.5`` (sparsity emerging from the posterior;
        under the paper's schedule survivors keep ``gamma ~ 1``, so this equals
        the mask); ``"mask"`` prunes exactly the masked weights.
    :param torch.dtype codebook_dtype: codebook values are rounded to this
        dtype (e.g. ``torch.float16`` for the file) and the greedy weights are
        defined by the rounded values.
    """
    out = {}
    for name, site in model.sites.items():
        p = guide.params_of(name)
        g = p.grouping
        k = responsibility_logits(site.anchor, g.gather(p.locs), g.gather(p.scales), g.gather(p.logits)).argmax(-1)
        num_components = p.locs.shape[-1]
        # positional groups (per channel / column block): the position gives the group, a code is k alone
        codes = k if g.index is None or g.group_size is not None else g.index * num_components + k
        keep = _keep(p, prune)
        outlier_index = outlier_values = None
        if g.full_precision is not None:  # kept exactly, as sparse full-precision entries
            keep = keep & ~g.full_precision
            outlier_index = g.full_precision.reshape(-1).nonzero().squeeze(1).cpu()
            outlier_values = site.anchor.detach().reshape(-1)[outlier_index.to(site.anchor.device)].cpu()
        out[name] = CompressedTensor.from_assignment(
            p.locs, codes, keep, codebook_dtype=codebook_dtype, outlier_index=outlier_index,
            outlier_values=outlier_values, num_components=num_components, group_size=g.group_size)
    return out


def greedy_weights(model, guide, **kwargs):
    """``name -> dense greedy weight`` (on the anchors' device)."""
    hard = hard_assignment(model, guide, **kwargs)
    return {name: hard[name].to_dense().to(site.anchor) for name, site in model.sites.items()}


@torch.no_grad()
def greedy_map(model, guide, **kwargs):
    """A plain copy of the network with the greedy MAP weights (an ``nn.Module``)."""
    net = copy.deepcopy(model.net)
    for name, weight in greedy_weights(model, guide, **kwargs).items():
        param = net.get_parameter(name)
        param.copy_(weight)
        param.requires_grad_(True)
    return net


@torch.no_grad()
def compressed_weights(model, guide, *, prune="posterior", codebook_dtype=torch.float32):
    """
    What is exported from a fitted model: ``(compressed, net)``, ``compressed`` the
    :func:`hard_assignment` (``num_components`` the site's ``K``) and ``net`` the
    :func:`greedy_map` network holding exactly those weights, codebooks rounded to
    ``codebook_dtype`` (a ``torch.dtype`` or its name, e.g. ``"float16"`` for the
    file). Hand both to :func:`sqs_pyro.export.export_checked`.
    """
    if isinstance(codebook_dtype, str):
        codebook_dtype = getattr(torch, codebook_dtype)
    compressed = {  # K per group, for the paper's compression rate (the codebook holds G * K values)
        name: dataclasses.replace(ct, num_components=model.sites[name].settings.guide.num_components)
        for name, ct in hard_assignment(model, guide, prune=prune, codebook_dtype=codebook_dtype).items()
    }
    return compressed, greedy_map(model, guide, prune=prune, codebook_dtype=codebook_dtype)


@torch.no_grad()
def sample_networks(model, guide, num_samples=10, *, eval_temperature=None, prune="posterior", generator=None):
    """
    Draw ``num_samples`` weight sets: each kept weight takes codebook value
    ``mu_k`` with ``k ~ Categorical(phi_i)``, pruned weights stay 0.

    :param float eval_temperature: temperature of ``phi`` at evaluation (``tau``
        if None); larger values soften ``phi`` and make samples differ from greedy.
    :returns: a list of ``name -> weight`` dicts.
    """
    draws = [{} for _ in range(num_samples)]
    for name, site in model.sites.items():
        p = guide.params_of(name)
        phi = p.component_probs(site.anchor, eval_temperature)
        keep = _keep(p, prune)
        locs = p.grouping.gather(p.locs).expand(phi.shape)
        flat_phi = phi.reshape(-1, phi.shape[-1])
        flat_locs = locs.reshape(-1, phi.shape[-1])
        for draw in draws:
            k = torch.multinomial(flat_phi, 1, generator=generator)
            draw[name] = flat_locs.gather(-1, k).reshape(site.anchor.shape) * keep
    return draws


@contextlib.contextmanager
def _eval_mode(net):
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


@torch.no_grad()
def bayesian_average(model, guide, x, num_samples=10, *, eval_temperature=None, networks=None, **kwargs):
    """
    Logits averaged over ``num_samples`` networks drawn by :func:`sample_networks`
    (pass ``networks`` to reuse draws across batches).
    """
    if networks is None:
        networks = sample_networks(model, guide, num_samples, eval_temperature=eval_temperature, **kwargs)
    total = None
    with _eval_mode(model.net):
        for weights in networks:
            out = model.run_net(weights, x)
            logits = getattr(out, "logits", out)
            total = logits if total is None else total + logits
    return total / len(networks)
