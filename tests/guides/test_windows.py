"""Windows for long-tailed layers (docs/method.md §5): equal-count and outlier-aware (SQS) groupings."""

from types import SimpleNamespace

import pytest
import torch

from sqs_pyro.guides.groups import Grouping
from sqs_pyro.guides.strategies import build_grouping
from sqs_pyro.guides.windows import (
    equal_windows,
    outlier_fences,
    outlier_windows,
    window_reconstruction_error,
)


def _student_t(df, shape=(256, 256), seed=0):
    torch.manual_seed(seed)
    return torch.distributions.StudentT(df).sample(shape) * 0.02


def _planted(num_outliers=32, shape=(256, 256), seed=0):
    """A Gaussian layer with a few large weights planted at random positions, half per side."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    pos = torch.randperm(w.numel(), generator=g)[:num_outliers]
    magnitude = 0.5 + 0.7 * torch.rand(num_outliers, generator=g)
    sign = torch.where(torch.arange(num_outliers) % 2 == 0, -1.0, 1.0)
    w.view(-1)[pos] = magnitude * sign
    return w


def _stable_rank_windows(w, cuts):
    """Reference: window of each weight by its rank in a *stable* sort, cut before each rank in ``cuts``."""
    order = torch.argsort(w.reshape(-1), stable=True)
    of_rank = torch.searchsorted(torch.tensor(cuts, dtype=torch.long), torch.arange(w.numel()), right=True)
    index = torch.empty(w.numel(), dtype=torch.long)
    index[order] = of_rank
    return index.reshape(w.shape)


def _quantile_fences(w, factor=5.0):
    q1, q3 = torch.quantile(w.reshape(-1).double(), torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    return q1 - factor * (q3 - q1), q3 + factor * (q3 - q1)


def _check_partition(g, w):
    assert g.index.shape == w.shape
    assert g.index.dtype == torch.long
    assert int(g.index.min()) == 0 and int(g.index.max()) == g.num_groups - 1
    counts = torch.bincount(g.index.reshape(-1), minlength=g.num_groups)
    assert counts.numel() == g.num_groups and bool((counts > 0).all()), "every group must be non-empty"
    return counts


def _check_contiguous(g, w, mask=None):
    """Groups follow the value order: sorted stably, the group ids never decrease."""
    flat, idx = w.reshape(-1), g.index.reshape(-1)
    if mask is not None:
        flat, idx = flat[mask.reshape(-1)], idx[mask.reshape(-1)]
    order = torch.argsort(flat, stable=True)
    assert bool((idx[order].diff() >= 0).all())


# ---------------------------------------------------------------- equal windows


@pytest.mark.parametrize("shape", [(256, 256), (8, 3, 3, 3), (1001,)])
@pytest.mark.parametrize("blocks", [1, 4, 7])
def test_equal_windows_partition_into_equal_contiguous_windows(shape, blocks):
    torch.manual_seed(0)
    w = torch.randn(shape)
    g = equal_windows(w, blocks)
    assert isinstance(g, Grouping) and g.kind == "equal" and g.num_groups == blocks
    assert g.full_precision is None
    counts = _check_partition(g, w)
    assert int(counts.max() - counts.min()) <= 1
    _check_contiguous(g, w)
    flat = w.reshape(-1)
    for a in range(blocks - 1):  # windows do not overlap in value
        assert flat[g.index.reshape(-1) == a].max() < flat[g.index.reshape(-1) == a + 1].min()


def test_equal_windows_with_ties_cut_by_stable_rank():
    # only five distinct values: runs of ties straddle every cut
    torch.manual_seed(0)
    w = torch.randint(-2, 3, (60, 50)).float()
    g = equal_windows(w, 4)
    counts = _check_partition(g, w)
    assert counts.tolist() == [750, 750, 750, 750]
    n = w.numel()
    assert torch.equal(g.index, _stable_rank_windows(w, [n // 4, n // 2, 3 * n // 4]))


def test_equal_windows_on_tiny_and_constant_tensors():
    g = equal_windows(torch.tensor([2.0, 1.0]), blocks=4)  # fewer weights than blocks: one window each
    assert g.num_groups == 2 and g.index.tolist() == [1, 0]
    g = equal_windows(torch.zeros(10), blocks=3)  # all tied: still equal counts
    assert torch.bincount(g.index).tolist() == [3, 3, 4]
    with pytest.raises(ValueError, match="blocks"):
        equal_windows(torch.randn(10), blocks=0)
    with pytest.raises(ValueError, match="empty"):
        equal_windows(torch.zeros(0), blocks=2)


def test_windows_accept_parameters_and_half_precision():
    torch.manual_seed(0)
    w = torch.nn.Parameter(_student_t(2.0, (64, 32)))
    assert outlier_windows(w, 5).num_groups == 5
    assert equal_windows(w, 4).index.shape == w.shape
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        wd = w.detach().to(dtype)
        g = outlier_windows(wd, 5)
        # same tails as computed on the rounded weights themselves
        low, high = _quantile_fences(wd.double())
        assert torch.equal(g.index == 0, wd.double() < low)
        assert torch.equal(g.index == g.num_groups - 1, wd.double() > high)
        _check_partition(g, wd)


# ---------------------------------------------------------------- outlier-aware windows


@pytest.mark.parametrize("blocks", [3, 4, 6])
@pytest.mark.parametrize("df", [2.0, 3.0])
def test_outlier_windows_tails_are_exactly_the_weights_beyond_the_fences(df, blocks):
    w = _student_t(df)
    low, high = _quantile_fences(w)
    assert outlier_fences(w) == pytest.approx((low, high), rel=1e-6)
    left, right = w < low, w > high
    assert left.any() and right.any()

    g = outlier_windows(w, blocks)
    assert g.kind == "outlier" and g.num_groups == blocks and g.full_precision is None
    counts = _check_partition(g, w)
    assert torch.equal(g.index == 0, left)
    assert torch.equal(g.index == blocks - 1, right)
    middle = counts[1:-1]
    assert int(middle.sum()) == w.numel() - int(left.sum()) - int(right.sum())
    assert int(middle.max() - middle.min()) <= 1
    _check_contiguous(g, w)


def test_outlier_windows_factor_moves_the_fences():
    w = _student_t(2.0)
    wide, narrow = outlier_windows(w, 4, factor=10.0), outlier_windows(w, 4, factor=1.5)
    n_wide = int(((wide.index == 0) | (wide.index == 3)).sum())
    n_narrow = int(((narrow.index == 0) | (narrow.index == 3)).sum())
    assert 0 < n_wide < n_narrow
    low, high = _quantile_fences(w, 1.5)
    assert n_narrow == int(((w < low) | (w > high)).sum())


def test_outlier_windows_drop_empty_tails_and_renumber():
    torch.manual_seed(0)
    bulk = torch.rand(999)  # uniform: no weight can lie 5 IQRs out
    g = outlier_windows(bulk, 4)
    assert g.num_groups == 2
    _check_partition(g, bulk)

    one_sided = torch.cat([bulk, torch.tensor([50.0])])
    g = outlier_windows(one_sided, 4)
    assert g.num_groups == 3
    counts = _check_partition(g, one_sided)
    assert int(g.index[-1]) == 2 and int(counts[2]) == 1

    left_only = torch.cat([torch.tensor([-50.0]), bulk])
    g = outlier_windows(left_only, 5)
    assert g.num_groups == 4 and int(g.index[0]) == 0
    _check_partition(g, left_only)


def test_outlier_windows_with_ties_cut_by_stable_rank():
    torch.manual_seed(0)
    w = torch.cat([torch.randint(-3, 4, (3000,)).float(), torch.tensor([-100.0, -90.0, 80.0])])
    g = outlier_windows(w, 5)
    n = w.numel()
    # left tail: ranks 0-1, right tail: rank n-1, middle: 3 windows of (n - 3) / 3 = 1000
    assert torch.equal(g.index, _stable_rank_windows(w, [2, 1002, 2002, n - 1]))


def test_outlier_windows_full_precision_tails():
    w = _student_t(2.0)
    low, high = _quantile_fences(w)
    tails = (w < low) | (w > high)
    g = outlier_windows(w, 6, tails="full")
    assert g.num_groups == 4
    assert g.full_precision is not None and g.full_precision.dtype == torch.bool
    assert torch.equal(g.full_precision, tails)
    _check_partition(g, w)  # index stays total: tails sit in the nearest middle window
    assert bool((g.index[w < low] == 0).all()) and bool((g.index[w > high] == g.num_groups - 1).all())
    counts = torch.bincount(g.index[~tails], minlength=g.num_groups)
    assert int(counts.max() - counts.min()) <= 1
    _check_contiguous(g, w, mask=~tails)
    members = g.members(w)
    assert sum(m.numel() for m in members) == w.numel() - int(tails.sum())
    assert all(m.numel() > 0 for m in members)

    torch.manual_seed(0)
    assert outlier_windows(torch.rand(100), 4, tails="full").full_precision is None


def test_outlier_windows_reject_bad_arguments():
    w = torch.randn(100)
    for blocks in (0, 1, 2):
        with pytest.raises(ValueError, match="blocks >= 3"):
            outlier_windows(w, blocks)
    with pytest.raises(ValueError, match="tails"):
        outlier_windows(w, 4, tails="drop")
    with pytest.raises(ValueError, match="factor"):
        outlier_windows(w, 4, factor=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        outlier_windows(torch.tensor([0.0, 1.0, float("nan")]), 4)


def test_windows_above_the_torch_quantile_size_limit():
    n = 2**24 + 3  # torch.quantile refuses inputs this large
    torch.manual_seed(0)
    w = torch.randn(n)
    w[:4] = torch.tensor([-40.0, -30.0, 30.0, 40.0])
    g = outlier_windows(w, 4)
    assert g.num_groups == 4
    assert torch.bincount(g.index).tolist() == [2, (n - 4) // 2, (n - 4) - (n - 4) // 2, 2]
    assert torch.bincount(equal_windows(w, 4).index).tolist() == [(j + 1) * n // 4 - j * n // 4 for j in range(4)]


def test_build_grouping_dispatches_to_windows():
    w = _student_t(2.0, (32, 32))
    settings = SimpleNamespace(window="outlier", blocks=5, outlier_factor=5.0, tails="full")
    g = build_grouping(w, settings)
    assert g.kind == "outlier" and g.full_precision is not None and g.num_groups == 3
    g = build_grouping(w, SimpleNamespace(window="equal", blocks=3, outlier_factor=5.0, tails="gmm"))
    assert g.kind == "equal" and g.num_groups == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windows_on_cuda_match_cpu():
    w = _student_t(2.0)
    windowings = (lambda x: equal_windows(x, 4), lambda x: outlier_windows(x, 6), lambda x: outlier_windows(x, 4, tails="full"))
    for fn in windowings:
        cpu, gpu = fn(w), fn(w.cuda())
        assert gpu.index.device.type == "cuda"
        assert torch.equal(cpu.index, gpu.index.cpu()) and cpu.num_groups == gpu.num_groups
        if cpu.full_precision is not None:
            assert torch.equal(cpu.full_precision, gpu.full_precision.cpu())


# ---------------------------------------------------------------- reconstruction error


def test_reconstruction_error_basics():
    w = torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0, 5.0])
    assert window_reconstruction_error(w, Grouping.layer(w.shape), 3) == 0.0
    # one group, K = 2: k-means settles on the centres {0.5, 5}
    layer = window_reconstruction_error(w, Grouping.layer(w.shape), 2)
    assert layer == pytest.approx(((0 - 0.5) ** 2 * 2 + (1 - 0.5) ** 2 * 2) / 6)
    # full-precision weights contribute no error, but count in the mean
    g = Grouping(w.shape, torch.zeros(6, dtype=torch.long), 1, full_precision=w == 5.0)
    assert window_reconstruction_error(w, g, 1) == pytest.approx((0.5**2 * 4) / 6)
    with pytest.raises(ValueError, match="shape"):
        window_reconstruction_error(w, Grouping.layer(torch.Size([3, 2])), 2)


@pytest.mark.parametrize("num_components", [4, 8, 16])
@pytest.mark.parametrize(
    "name, make",
    [
        ("student-t df=2", lambda: _student_t(2.0)),
        ("student-t df=2.5", lambda: _student_t(2.5)),
        ("student-t df=3", lambda: _student_t(3.0)),
        ("gaussian + 32 planted outliers", lambda: _planted(32)),
    ],
)
def test_outlier_windows_reconstruct_heavy_tails_better_than_equal_windows(name, make, num_components):
    w = make()
    outlier = window_reconstruction_error(w, outlier_windows(w, 4), num_components)
    equal = window_reconstruction_error(w, equal_windows(w, 4), num_components)
    layer = window_reconstruction_error(w, Grouping.layer(w.shape), num_components)
    assert outlier < 0.9 * equal, (name, outlier, equal)
    assert equal < layer, (name, equal, layer)
    full = window_reconstruction_error(w, outlier_windows(w, 4, tails="full"), num_components)
    assert full <= outlier * (1 + 1e-9) + 1e-12, (name, full, outlier)
