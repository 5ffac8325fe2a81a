"""
The size of each layer's inputs over calibration data, for Wanda's pruning score.

Wanda [1] prunes the weights with the smallest ``|W_ij| * ||X_j||_2``, where
``||X_j||_2`` is the norm of input feature ``j`` over all calibration tokens:
a small weight on a large input matters. :func:`input_norms` collects
``||X_j||_2`` for the compressed modules with forward hooks, and
:func:`wanda_scores` forms the score (``compress.score = "wanda"`` of
:class:`~sqs_pyro.run.trainer.SQSTrainer`).

Example::

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> norms = input_norms(net, [torch.tensor([[3.0, 0.0], [4.0, 1.0]])], ["0.weight"])
    >>> norms["0.weight"]
    tensor([5., 1.])
    >>> wanda_scores(torch.tensor([[1.0, 2.0]]), norms["0.weight"])
    tensor([[5., 2.]])

**References**

[1] M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective Pruning Approach for
    Large Language Models", arXiv:2306.11695 (2023).
"""

import torch
from torch import nn

from sqs_pyro.prior_spec import is_compressible


def _feature_sums(module, x):
    # sum over tokens / positions of x_j^2 for each input feature j of the module's weight columns
    x = x.detach().float()
    if isinstance(module, nn.Linear) or not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return x.reshape(-1, x.shape[-1]).square().sum(0)  # Linear and transformers' Conv1D: last dim
    return x.square().sum([d for d in range(x.dim()) if d != 1])  # per input channel


@torch.no_grad()
def input_norms(net, batches, names, forward=None):
    """
    ``||X_j||_2`` of every input feature of the modules owning ``names`` over
    the calibration ``batches``.

    :param torch.nn.Module net: the network.
    :param batches: an iterable of inputs.
    :param names: weight names (``"<module>.weight"``, e.g. ``list(model.sites)``).
    :param callable forward: ``(net, batch) -> anything``; default ``net(batch)``.
    :returns: ``{name: 1-d tensor}``: one norm per input feature (per input
        channel of a convolution; for transformers' ``Conv1D`` per row).
    """
    modules = dict(net.named_modules())
    sums, hooks = {}, []
    for name in names:
        module_name = name[: -len(".weight")] if name.endswith(".weight") else ""
        module = modules.get(module_name)
        if module is None or not is_compressible(module):
            raise ValueError(f"{name!r} is not the weight of a compressible module of {type(net).__name__}")

        def hook(mod, args, _out, name=name):
            s = _feature_sums(mod, args[0])
            sums[name] = s if name not in sums else sums[name] + s

        hooks.append(module.register_forward_hook(hook))
    try:
        for batch in batches:
            net(batch) if forward is None else forward(net, batch)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the calibration batches never reached {missing}")
    return {n: sums[n].sqrt() for n in names}


def wanda_scores(weight, norms):
    """
    Wanda's score ``|W_ij| * ||X_j||_2`` with ``j`` the input feature of each
    weight (dim 1 of a Linear or convolution weight, broadcast over kernels;
    dim 0 for a transformers ``Conv1D`` weight of shape ``(in, out)``, when
    ``norms`` matches it).
    """
    w = weight.detach().abs()
    if w.dim() >= 2 and norms.numel() == w.shape[1]:
        return w * norms.to(w).reshape((1, -1) + (1,) * (w.dim() - 2))
    if w.dim() == 2 and norms.numel() == w.shape[0]:
        return w * norms.to(w).unsqueeze(1)
    raise ValueError(f"{norms.numel()} input norms do not match a weight of shape {tuple(w.shape)}")
