"""
Plain supervised training of the base (uncompressed) classifier.

AdamW with a one-cycle learning-rate schedule, cross-entropy loss. Runs are
reproducible on CPU for a given ``seed``, initial weights and thread count
(seed the global RNG before building the network to fix its initialization).

Example::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(256, 4); y = (x[:, 0] > 0).long()
    >>> net = torch.nn.Linear(4, 2)
    >>> out = train_classifier(net, TensorDataset(x, y), TensorDataset(x, y), epochs=5, batch_size=32, lr=0.1, progress=False)
    >>> out["test_accuracy"] > 0.9, len(out["history"])
    (True, 5)
"""

import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm


def _tensors(ds):
    """The (x, y) tensors behind a TensorDataset (or a Subset of one), else None."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors
    if isinstance(ds, Subset):
        inner = _tensors(ds.dataset)
        if inner is not None:
            idx = torch.as_tensor(ds.indices, dtype=torch.long)
            return inner[0][idx], inner[1][idx]
    return None


def _batches(ds, batch_size, *, shuffle=False, generator=None):
    """Yields ``(x, y)`` minibatches; indexes tensors directly when it can (much faster than a DataLoader)."""
    tensors = _tensors(ds)
    if tensors is None:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)
        return
    x, y = tensors
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


@torch.no_grad()
def evaluate_accuracy(net, ds, batch_size=512, device="cpu"):
    """
    Top-1 accuracy of ``net`` on ``ds`` (network put in eval mode; its mode is restored).

    :returns: accuracy in ``[0, 1]`` as a float.
    """
    was_training = net.training
    net.eval()
    correct, total = 0, 0
    try:
        for x, y in _batches(ds, batch_size):
            logits = net(x.to(device, non_blocking=True))
            logits = getattr(logits, "logits", logits)
            correct += (logits.argmax(-1).cpu() == y).sum().item()
            total += y.numel()
    finally:
        net.train(was_training)
    return correct / max(total, 1)


def train_classifier(
    net,
    train_ds,
    test_ds,
    *,
    epochs,
    batch_size=128,
    lr=3e-3,
    weight_decay=5e-4,
    device="cpu",
    seed=0,
    progress=True,
):
    """
    Trains ``net`` in place with AdamW + one-cycle schedule and cross-entropy.

    :param torch.nn.Module net: classifier returning logits.
    :param train_ds: training dataset of ``(x, y)`` pairs.
    :param test_ds: test dataset, evaluated after every epoch (may be None).
    :param int epochs: number of passes over ``train_ds``.
    :param int batch_size: minibatch size.
    :param float lr: peak learning rate of the one-cycle schedule.
    :param float weight_decay: AdamW decoupled weight decay.
    :param device: where to train.
    :param int seed: seeds shuffling and dropout.
    :param bool progress: show a tqdm bar with running loss / accuracy.
    :returns: ``dict(history=[per-epoch dicts], test_accuracy=float or None)``;
        each history entry has ``epoch``, ``train_loss``, ``train_accuracy``,
        ``test_accuracy`` and ``seconds``.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net.to(device)
    steps_per_epoch = math.ceil(len(train_ds) / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    history, test_acc = [], None
    for epoch in range(1, epochs + 1):
        net.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=True)
        for x, y in _batches(train_ds, batch_size, shuffle=True, generator=generator):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = net(x)
            logits = getattr(logits, "logits", logits)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * y.numel()
            correct += (logits.detach().argmax(-1) == y).sum().item()
            seen += y.numel()
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        if test_ds is not None:
            test_acc = evaluate_accuracy(net, test_ds, device=device)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", test_acc=f"{test_acc:.4f}")
        bar.close()
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "test_accuracy": test_acc,
                "seconds": time.perf_counter() - start,
            }
        )
    return {"history": history, "test_accuracy": test_acc}
