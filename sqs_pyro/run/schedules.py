"""
Sparsification schedules (docs/method.md §6).

The paper prunes on the cubic schedule of Zhu & Gupta (2017): between steps
``t0`` and ``t1`` the target sparsity rises from ``s_i`` to ``s_f`` as
``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3``; at each step the
``floor(s_t N)`` lowest-scoring weights across all compressed groups are masked.

Example::

    >>> cubic_sparsity(0, 0.0, 0.5, 10, 20), cubic_sparsity(15, 0.0, 0.5, 10, 20), cubic_sparsity(30, 0.0, 0.5, 10, 20)
    (0.0, 0.4375, 0.5)
"""

import torch


def cubic_sparsity(step, initial, final, start, end):
    """Target sparsity at ``step`` of the cubic schedule."""
    if step <= start:
        return float(initial)
    if step >= end:
        return float(final)
    frac = (step - start) / (end - start)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


@torch.no_grad()
def global_topk_masks(scores, sparsity):
    """
    Masks keeping all but the ``floor(sparsity * N)`` lowest scores across all
    tensors (``N`` = total number of weights).

    :param dict scores: ``name -> score tensor`` (higher = more important).
    :param float sparsity: fraction to prune, in ``[0, 1]``.
    :returns: ``name -> bool mask`` (True = kept).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    num_pruned = int(sparsity * flat.numel())
    if num_pruned == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    order = torch.argsort(flat, stable=True)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:num_pruned]] = False
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.numel()].reshape(s.shape).to(s.device)
        offset += s.numel()
    return masks
