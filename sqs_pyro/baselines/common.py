"""
What every baseline shares: the compressed sites, global magnitude masks,
minibatches, and one exporter (the same writer, reload check and evaluation
for every method).

Example::

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> sites = compressed_sites(net, {"_default": {"num_components": 4}})
    >>> {name: k for name, (k, _) in sites.items()}
    {'0.weight': 4, '2.weight': 4}
    >>> masks = magnitude_masks(net, sites, 0.5)
    >>> sum(int((~m).sum()) for m in masks.values())
    24
"""

import copy
import dataclasses
import math
import os

import torch

from sqs_pyro.export import load_into, save, size_report
from sqs_pyro.prior_spec import PriorSpec
from sqs_pyro.run.schedules import global_topk_masks
from sqs_pyro.run.config import default_prior_for
from sqs_pyro.run.train_base import evaluate_accuracy
from sqs_pyro.run.trainer import epoch_permutation


def prior_of(cfg):
    """The run's prior spec as a dict (the architecture's default when the config has none)."""
    if cfg.prior is not None:
        return PriorSpec.coerce(cfg.prior).to_dict()
    return PriorSpec.coerce(default_prior_for(cfg.model.arch)).to_dict()


def compressed_sites(net, prior):
    """``name -> (K, PriorSettings)`` of the weights the spec compresses (the resolved SQS sites)."""
    return {name: (s.num_components, s) for name, s in PriorSpec.coerce(prior).resolve(net).items()}


def common_k(sites):
    """The ``K`` of every site if they agree, else ``"mixed"``."""
    ks = {k for k, _ in sites.values()}
    return ks.pop() if len(ks) == 1 else "mixed"


@torch.no_grad()
def magnitude_masks(net, sites, sparsity):
    """Global magnitude pruning: masks keeping all but the ``floor(sparsity N)`` smallest ``|w|`` over all sites."""
    return global_topk_masks({name: net.get_parameter(name).detach().abs() for name in sites}, sparsity)


def codebook_dtype(cfg):
    return torch.float16 if cfg.export.codebook_dtype == "float16" else torch.float32


def minibatches(n, batch_size, epochs, seed):
    """
    Index tensors of ``ceil(epochs * steps_per_epoch)`` steps, with the shuffling
    of the SQS trainer (a pure function of ``(seed, epoch)``).
    """
    steps_per_epoch = max(1, n // batch_size)
    for step in range(num_steps(n, batch_size, epochs)):
        epoch, j = divmod(step, steps_per_epoch)
        yield epoch_permutation(seed, epoch, n)[j * batch_size : (j + 1) * batch_size]


def num_steps(n, batch_size, epochs):
    steps_per_epoch = max(1, n // batch_size)
    return max(1, math.ceil(epochs * steps_per_epoch))


@torch.no_grad()
def apply_compressed(net, compressed):
    """Write the dense form of every :class:`CompressedTensor` into ``net`` (in place)."""
    for name, ct in compressed.items():
        param = net.get_parameter(name)
        param.copy_(ct.to_dense().to(param))
    return net


@dataclasses.dataclass
class Exported:
    """What the shared exporter measured."""

    path: str
    accuracy: float
    report: object  # sqs_pyro.export.SizeReport
    entropy_coded_path: str = None
    entropy_coded_report: object = None


def export_and_evaluate(net, compressed, test, device, path, *, codebook_dtype="float16", metadata=None,
                        entropy_coded=True):
    """
    Save ``compressed`` (+ every other tensor of ``net``'s state dict, dense) with
    :func:`sqs_pyro.export.save`, reload the file into a copy of ``net``, check the
    reload is bit-exact, and measure the reloaded network's test accuracy.

    :param net: the network holding the final weights (compressed tensors already
        equal to their dense form, see :func:`apply_compressed`).
    :returns: an :class:`Exported`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = net.state_dict()
    dense = {k: v for k, v in state.items() if k not in compressed}
    save(path, compressed, dense, metadata=metadata or {}, codebook_dtype=codebook_dtype)
    reloaded = copy.deepcopy(net)
    load_into(reloaded, path)
    reloaded.to(device)
    for name, tensor in state.items():
        got = reloaded.state_dict()[name]
        if not torch.equal(got.to(tensor), tensor):
            raise RuntimeError(f"reloaded file {path} differs from the exported weights at {name}")
    out = Exported(path=path, accuracy=evaluate_accuracy(reloaded, test, device=device), report=size_report(path))
    if entropy_coded:
        ec_path = path.replace(".safetensors", ".ec.safetensors")
        save(ec_path, compressed, dense, metadata=metadata or {}, codebook_dtype=codebook_dtype, entropy_coded=True)
        out.entropy_coded_path, out.entropy_coded_report = ec_path, size_report(ec_path)
    return out
