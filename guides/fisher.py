"""
Sensitivity of the loss to each weight from calibration data: the diagonal Fisher.

SqueezeLLM [1] weights its per-channel k-means by the diagonal of the Fisher
information, estimated as the mean squared gradient of the loss with respect to
each weight over a few calibration batches,

    F_ii ≈ (1 / B) sum_b (d loss_b / d w_i)^2,

so that the codebook values land where a rounding error would cost the most loss.
:class:`~sqs_pyro.guides.SQSGuide` takes the result as ``sensitivity=``.

Example::

    >>> import torch
    >>> net = torch.nn.Linear(3, 1)
    >>> batches = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(2)]
    >>> mse = lambda net, batch: torch.nn.functional.mse_loss(net(batch[0]), batch[1])
    >>> fisher = diagonal_fisher(net, mse, batches, ["weight"])
    >>> fisher["weight"].shape, bool((fisher["weight"] >= 0).all())
    (torch.Size([1, 3]), True)

**References**

[1] S. Kim, C. Hooper, A. Gholami, Z. Dong, X. Li, S. Shen, M. W. Mahoney, K. Keutzer,
    "SqueezeLLM: Dense-and-Sparse Quantization", arXiv:2306.07629 (2023).
"""

import torch


def diagonal_fisher(net, loss_fn, batches, names=None):
    """
    Mean squared gradient of ``loss_fn(net, batch)`` with respect to each named
    parameter, over ``batches`` (one backward pass per batch). The parameters'
    ``requires_grad`` and ``.grad`` are restored afterwards; other parameters
    take no gradient.

    :param torch.nn.Module net: the network (e.g. ``SQSModel.net``).
    :param callable loss_fn: ``(net, batch) -> scalar loss`` (e.g. the mean
        token cross-entropy of a causal LM on a calibration batch).
    :param batches: an iterable of calibration batches.
    :param names: parameter names (default: every parameter); for an
        :class:`~sqs_pyro.models.SQSModel` pass ``list(model.sites)``.
    :returns: ``{name: tensor of the parameter's shape}`` (float32).
    """
    params = dict(net.named_parameters())
    names = list(params) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{type(net).__name__} has no parameter(s) {missing}")
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    wanted = set(names)
    total = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    count = 0
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
            p.grad = None
        for batch in batches:
            loss = loss_fn(net, batch)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += g.detach().float().square()
            count += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n][0])
            p.grad = saved[n][1]
    if count == 0:
        raise ValueError("diagonal_fisher needs at least one calibration batch")
    return {n: t / count for n, t in total.items()}
