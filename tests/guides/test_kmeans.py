import torch

from sqs_pyro.guides import kmeans_1d
from sqs_pyro.guides.kmeans import kmeans_groups


def test_equal_weights_give_the_unweighted_result():
    torch.manual_seed(0)
    x = torch.randn(7, 300, dtype=torch.float64)
    plain = kmeans_groups(x, 8)
    weighted = kmeans_groups(x, 8, weights=torch.full_like(x, 2.0))
    for a, b in zip(plain, weighted):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_heavy_point_pulls_its_centre_onto_itself():
    torch.manual_seed(1)
    x = torch.randn(1, 500, dtype=torch.float64)
    w = torch.ones_like(x)
    w[0, 123] = 1e9
    locs = kmeans_groups(x, 4, weights=w).locs[0]
    assert (locs - x[0, 123]).abs().min() < 1e-6
    assert (kmeans_groups(x, 4).locs[0] - x[0, 123]).abs().min() > 1e-3


def test_zero_weights_leave_points_out():
    x = torch.tensor([[0.0, 0.1, 1.0, 1.1, 50.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    locs = kmeans_groups(x, 2, weights=w).locs[0]
    assert torch.allclose(locs, torch.tensor([0.05, 1.05]))


def test_groups_are_independent_and_match_kmeans_1d_on_separated_data():
    x = torch.stack([torch.tensor([-1.0, -1.0, 1.0, 1.0]), torch.tensor([3.0, 3.0, 3.0, 5.0])])
    init = kmeans_groups(x, 2)
    for g in range(2):
        ref = kmeans_1d(x[g], 2)
        assert torch.allclose(init.locs[g], ref.locs) and torch.allclose(init.weights[g], ref.weights, atol=1e-4)
    assert kmeans_groups(x[0], 2).locs.shape == (2,)
