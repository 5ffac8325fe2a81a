"""
Deep-Compression-style sequential compression: prune, fine-tune, then quantize
(Han, Mao & Dally, ICLR 2016) -- the prune-then-quantize pipeline SQS is
contrasted with (docs/method.md §10).

1. **Prune**: global magnitude pruning of the compressed weights to the target
   sparsity, in one shot (one threshold over all compressed layers).
2. **Fine-tune** the whole network with the mask fixed: cross-entropy, AdamW,
   cosine learning rate, for ``(1 - centroid_fraction)`` of the epoch budget
   (the budget is the SQS compression's; pruned weights are reset to zero after
   every step).
3. **Quantize** every compressed layer's survivors by 1-d k-means into ``K``
   values (:func:`~sqs_pyro.guides.kmeans_1d`; each weight takes its nearest
   centroid).
4. **Centroid fine-tune** for the remaining ``centroid_fraction`` of the budget:
   the codes stay fixed and each layer's ``K`` centroids are trained (the
   gradient of a centroid is the sum over its weights, as in Deep Compression),
   together with the uncompressed parameters. ``centroid_fraction=0`` skips it.

Example::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from sqs_pyro.baselines.common import compressed_sites
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
    >>> sites = compressed_sites(net, {"_default": {"num_components": 4}})
    >>> out = deep_compression(net, sites, TensorDataset(x, y), sparsity=0.5, epochs=1, lr=1e-3, batch_size=16)
    >>> round(sum(ct.sparsity * ct.numel for ct in out.values()) / 96, 2)
    0.5
    >>> len(torch.unique(net[0].weight[net[0].weight != 0])) <= 4
    True
"""

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from sqs_pyro.export import CompressedTensor, apply_compressed
from sqs_pyro.guides.kmeans import kmeans_1d

from .common import magnitude_masks, minibatches, num_steps


@torch.no_grad()
def kmeans_quantize(weight, mask, num_components, codebook_dtype=torch.float32):
    """
    The kept entries of ``weight`` quantized to ``K`` k-means centroids (rounded
    to ``codebook_dtype``), each to its nearest centroid.

    :returns: a :class:`~sqs_pyro.export.CompressedTensor`.
    """
    survivors = weight.detach()[mask].float().cpu()
    if survivors.numel() == 0:
        codebook = torch.zeros(num_components)
    else:
        codebook = kmeans_1d(survivors, num_components).locs.float()
    codebook = codebook.to(codebook_dtype).float().sort().values
    codes = _nearest(survivors, codebook)
    return CompressedTensor(tuple(weight.shape), codebook, codes, mask.cpu(), num_components=num_components)


def _nearest(values, sorted_codebook):
    mids = (sorted_codebook[1:] + sorted_codebook[:-1]) / 2
    return torch.searchsorted(mids, values)


def _batches(train, n, batch_size, epochs, seed, device):
    x, y = train.tensors
    for idx in minibatches(n, batch_size, epochs, seed):
        yield x[idx].to(device), y[idx].to(device)


def masked_finetune(net, masks, train, *, epochs, lr, batch_size, seed=0, device="cpu", weight_decay=5e-4,
                    progress=False, desc="fine-tune"):
    """Fine-tune ``net`` in place with cross-entropy and AdamW, keeping the masked weights at zero."""
    with torch.no_grad():
        for name, mask in masks.items():
            net.get_parameter(name).mul_(mask)
    if epochs <= 0:
        return net
    n = len(train)
    steps = num_steps(n, batch_size, epochs)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    net.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for x, y in _batches(train, n, batch_size, epochs, seed, device):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for name, mask in masks.items():
                net.get_parameter(name).mul_(mask)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return net


def centroid_finetune(net, compressed, train, *, epochs, lr, batch_size, seed=0, device="cpu", weight_decay=5e-4,
                      codebook_dtype=torch.float32, progress=False, desc="centroids"):
    """
    Train each layer's codebook (codes fixed) and the uncompressed parameters.
    Returns ``compressed`` with the trained codebooks (rounded to ``codebook_dtype``).
    """
    if epochs <= 0:
        return compressed
    codebooks = {name: torch.nn.Parameter(ct.codebook.to(device)) for name, ct in compressed.items()}
    flat = {name: ct.mask.reshape(-1).nonzero().squeeze(-1).to(device) for name, ct in compressed.items()}
    codes = {name: ct.codes.to(device) for name, ct in compressed.items()}
    others = [p for name, p in net.named_parameters() if name not in compressed]
    opt = torch.optim.AdamW([{"params": list(codebooks.values()), "weight_decay": 0.0},
                             {"params": others, "weight_decay": weight_decay}], lr=lr)
    n = len(train)
    steps = num_steps(n, batch_size, epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    net.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for x, y in _batches(train, n, batch_size, epochs, seed + 1, device):
        weights = {}
        for name, ct in compressed.items():
            values = codebooks[name][codes[name]]
            weights[name] = values.new_zeros(math.prod(ct.shape)).scatter(0, flat[name], values).view(ct.shape)
        loss = F.cross_entropy(functional_call(net, weights, (x,)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    out = {}
    for name, ct in compressed.items():
        codebook = codebooks[name].detach().cpu().to(codebook_dtype).float()
        out[name] = CompressedTensor(ct.shape, codebook, ct.codes, ct.mask, num_components=ct.num_components)
    return out


def deep_compression(net, sites, train, *, sparsity, epochs, lr, batch_size, seed=0, device="cpu",
                     centroid_fraction=0.2, weight_decay=5e-4, codebook_dtype=torch.float32, progress=False):
    """
    Compress ``net`` in place (prune, fine-tune, k-means, centroid fine-tune) and
    return ``name -> CompressedTensor`` of its compressed weights.

    :param dict sites: ``name -> (K, settings)`` (see :func:`~sqs_pyro.baselines.common.compressed_sites`).
    :param float sparsity: target fraction of pruned compressed weights.
    :param float epochs: the whole training budget (fine-tune plus centroid fine-tune).
    :param float centroid_fraction: share of the budget spent on the centroids.
    """
    if not 0.0 <= centroid_fraction <= 1.0:
        raise ValueError(f"centroid_fraction must lie in [0, 1], got {centroid_fraction}")
    masks = magnitude_masks(net, sites, sparsity)
    kw = dict(lr=lr, batch_size=batch_size, seed=seed, device=device, weight_decay=weight_decay, progress=progress)
    masked_finetune(net, masks, train, epochs=epochs * (1 - centroid_fraction), desc="DC fine-tune", **kw)
    compressed = {
        name: kmeans_quantize(net.get_parameter(name), masks[name], k, codebook_dtype) for name, (k, _) in sites.items()
    }
    compressed = centroid_finetune(net, compressed, train, epochs=epochs * centroid_fraction,
                                   codebook_dtype=codebook_dtype, desc="DC centroids", **kw)
    apply_compressed(net, compressed)
    return compressed
