"""
What every baseline shares: the compressed sites, global magnitude masks,
minibatches, and one exporter (:func:`sqs_pyro.export.export_checked` and the
reloaded file's accuracy, for every method).

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

import dataclasses
import math

import torch

from sqs_pyro.export import export_checked
from sqs_pyro.prior_spec import PriorSpec
from sqs_pyro.run.config import default_prior_for
from sqs_pyro.run.schedules import global_topk_masks
from sqs_pyro.run.train_base import evaluate_accuracy
from sqs_pyro.run.trainer import epoch_permutation


def prior_of(cfg):
    """The run's prior spec as a dict (the architecture's default when the config has none)."""
    if cfg.prior is not None:
        return cfg.prior.to_dict()
    return PriorSpec.coerce(default_prior_for(cfg.model.arch)).to_dict()


def compressed_sites(net, prior):
    """``name -> (K, GuideSettings)`` of the weights the spec compresses (the resolved SQS sites)."""
    return {name: (s.guide.num_components, s.guide) for name, s in PriorSpec.coerce(prior).resolve(net).items()}


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
    Export with :func:`sqs_pyro.export.export_checked` (save, reload, check
    bit-exact, sizes) and measure the reloaded plain file's test accuracy.

    :param net: the network holding the final weights (compressed tensors already
        equal to their dense form, see :func:`sqs_pyro.export.apply_compressed`).
    :returns: an :class:`Exported`.
    """
    files = export_checked(path, net, compressed, metadata=metadata, codebook_dtype=codebook_dtype,
                           entropy_coded=entropy_coded)
    plain = files["plain"]
    out = Exported(path=plain.path, accuracy=evaluate_accuracy(plain.reloaded.to(device), test, device=device),
                   report=plain.report)
    if entropy_coded:
        out.entropy_coded_path, out.entropy_coded_report = files["entropy_coded"].path, files["entropy_coded"].report
    return out
