"""The pruning schedule: the cubic target sparsity and global top-k masks."""

import pytest
import torch

from sqs_pyro.run.schedules import cubic_sparsity, global_topk_masks


def test_cubic_sparsity_endpoints_formula_and_monotone():
    assert cubic_sparsity(-5, 0.1, 0.9, 10, 20) == 0.1 and cubic_sparsity(10, 0.1, 0.9, 10, 20) == 0.1
    assert cubic_sparsity(20, 0.1, 0.9, 10, 20) == 0.9 and cubic_sparsity(99, 0.1, 0.9, 10, 20) == 0.9
    assert cubic_sparsity(12, 0.1, 0.9, 10, 20) == pytest.approx(0.9 + (0.1 - 0.9) * 0.8 ** 3)
    values = [cubic_sparsity(t, 0.0, 0.75, 0, 100) for t in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # the cubic front-loads: half-way it is already 7/8 of the way
    assert values[50] == pytest.approx(0.75 * 7 / 8)


def test_global_topk_masks_prunes_the_smallest_scores_across_tensors():
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 8.0]]), "b": torch.tensor([2.0, 7.0, 0.5, 6.0])}
    masks = global_topk_masks(scores, 0.5)  # 8 weights: the 4 lowest (0.5, 1, 2, 3) go
    assert masks["a"].tolist() == [[True, False], [False, True]]
    assert masks["b"].tolist() == [False, True, False, True]
    assert all(m.dtype == torch.bool and m.shape == scores[k].shape for k, m in masks.items())


def test_global_topk_masks_floor_ties_and_bounds():
    scores = {"w": torch.ones(10)}
    assert int((~global_topk_masks(scores, 0.35)["w"]).sum()) == 3  # floor(0.35 * 10)
    assert global_topk_masks(scores, 0.35)["w"].tolist() == [False] * 3 + [True] * 7  # ties: stable order
    assert global_topk_masks(scores, 0.0)["w"].all()
    assert not global_topk_masks(scores, 1.0)["w"].any()
    with pytest.raises(ValueError, match="sparsity must lie in"):
        global_topk_masks(scores, 1.5)
