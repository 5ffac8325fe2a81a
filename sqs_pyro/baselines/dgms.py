"""
The DGMS baseline run: :class:`~sqs_pyro.baselines.dgms_guide.DGMSGuide` on the SQS
model, trained with the task loss only.

The loss is ``SQSELBO(kl_weight=0)`` divided by the number of training
examples: the likelihood at the posterior mean -- the DGMS soft weights
``sum_k phi_k mu_k`` -- i.e. the mean cross-entropy, with no KL gradient. The
optimizer and learning rate are the SQS run's (Adam, ``compress.lr``), over the
guide's parameters and the network's point parameters (biases, norms), for the
SQS epoch budget. The zero component initially covers the target fraction of
smallest-magnitude weights; the export is the argmax.

Example::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
    >>> model, guide = train_dgms(net, {"_default": {"num_components": 4}}, TensorDataset(x, y),
    ...                           sparsity=0.5, epochs=1, lr=1e-3, batch_size=16)
    >>> 0.3 < guide.sparsity() < 0.7
    True
"""

import pyro
import torch
from tqdm.auto import tqdm

from sqs_pyro.elbo import SQSELBO
from sqs_pyro.baselines.dgms_guide import DGMSGuide
from sqs_pyro.models import Categorical, SQSModel

from .common import minibatches, num_steps


def train_dgms(net, prior, train, *, sparsity, epochs, lr, batch_size, seed=0, device="cpu", progress=False):
    """
    Fit DGMS to ``net`` (which becomes the model's network: pass a copy).

    :param prior: the prior spec (only its sites and settings -- ``K``, ``tau``,
        windows, ``train_anchors`` -- are used; there is no KL).
    :returns: ``(model, guide)``.
    """
    pyro.settings.set(module_local_params=True)  # guide parameters live in the guide
    n = len(train)
    model = SQSModel(net, prior, Categorical(), num_data=n)
    guide = DGMSGuide(model, init_sparsity=sparsity).to(device)
    elbo = SQSELBO(plug_in="mean", kl_weight=0.0)  # the DGMS soft weights: the posterior mean
    params = list(guide.parameters()) + [p for _, p in model.point_parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    x_all, y_all = train.tensors
    steps = num_steps(n, batch_size, epochs)
    bar = tqdm(total=steps, desc="DGMS", disable=not progress, leave=False)
    model.net.train()
    for idx in minibatches(n, batch_size, epochs, seed):
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        loss = elbo.differentiable_loss(model, guide, x, y, subsample=idx.to(device)) / n
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DGMS loss is {loss.item()}: lower compress.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model, guide
