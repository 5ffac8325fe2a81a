"""
Magnitude pruning + uniform round-to-nearest (RTN) quantization, no fine-tune:
the cheapest sequential baseline.

Global magnitude pruning to the target sparsity (one threshold over all
compressed layers), then per layer ``K`` levels uniformly spanning the
surviving weights, ``linspace(min, max, K)``, and each survivor rounded to the
nearest level. Nothing is trained.

Example::

    >>> import torch
    >>> w = torch.tensor([-1.0, -0.1, 0.2, 0.4, 1.0])
    >>> ct = uniform_quantize(w, w.abs() > 0.15, 3)
    >>> ct.codebook.tolist(), ct.to_dense().tolist()
    ([-1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0, 1.0])
"""

import torch

from sqs_pyro.export import CompressedTensor, apply_compressed

from .common import magnitude_masks


@torch.no_grad()
def uniform_quantize(weight, mask, num_components, codebook_dtype=torch.float32):
    """
    The kept entries of ``weight`` rounded to ``K`` uniform levels spanning their
    range (levels rounded to ``codebook_dtype``).

    :returns: a :class:`~sqs_pyro.export.CompressedTensor`.
    """
    survivors = weight.detach()[mask].float().cpu()
    lo, hi = (survivors.min(), survivors.max()) if survivors.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    levels = torch.linspace(float(lo), float(hi), num_components).to(codebook_dtype).float()
    mids = (levels[1:] + levels[:-1]) / 2
    codes = torch.searchsorted(mids, survivors)
    return CompressedTensor(tuple(weight.shape), levels, codes, mask.cpu(), num_components=num_components)


def magnitude_rtn(net, sites, *, sparsity, codebook_dtype=torch.float32):
    """
    Prune ``net``'s compressed weights by global magnitude and round the survivors
    to uniform levels, in place. Returns ``name -> CompressedTensor``.

    :param dict sites: ``name -> (K, settings)`` (see :func:`~sqs_pyro.baselines.common.compressed_sites`).
    """
    masks = magnitude_masks(net, sites, sparsity)
    compressed = {
        name: uniform_quantize(net.get_parameter(name), masks[name], k, codebook_dtype)
        for name, (k, _) in sites.items()
    }
    apply_compressed(net, compressed)
    return compressed
