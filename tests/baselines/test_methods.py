import torch
from torch.utils.data import TensorDataset

from sqs_pyro.baselines import (
    deep_compression,
    format_table,
    gaussian_prior_spec,
    kmeans_quantize,
    magnitude_rtn,
    uniform_quantize,
)
from sqs_pyro.baselines.common import compressed_sites, magnitude_masks
from sqs_pyro.baselines.deep_compression import masked_finetune
from sqs_pyro.guides import kmeans_1d
from sqs_pyro.prior_spec import PriorSpec


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def _data(n=128):
    x = torch.randn(n, 6)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


SITES_SPEC = {"_default": {"num_components": 4}}


def test_magnitude_masks_are_global():
    net = _net()
    sites = compressed_sites(net, SITES_SPEC)
    masks = magnitude_masks(net, sites, 0.5)
    kept = torch.cat([net.get_parameter(n).detach().abs()[m] for n, m in masks.items()])
    pruned = torch.cat([net.get_parameter(n).detach().abs()[~m] for n, m in masks.items()])
    assert pruned.numel() == int(0.5 * (6 * 32 + 32 * 3))
    assert pruned.max() <= kept.min()


def test_uniform_quantize_rounds_to_uniform_levels():
    torch.manual_seed(1)
    w = torch.randn(20, 10)
    mask = w.abs() > 0.5
    ct = uniform_quantize(w, mask, 8)
    survivors = w[mask]
    assert torch.allclose(ct.codebook, torch.linspace(float(survivors.min()), float(survivors.max()), 8))
    dense = ct.to_dense()
    assert (dense[~mask] == 0).all()
    err = (dense[mask] - survivors).abs()
    assert (err <= (ct.codebook[1] - ct.codebook[0]) / 2 + 1e-6).all()


def test_magnitude_rtn_in_place():
    net = _net()
    sites = compressed_sites(net, SITES_SPEC)
    out = magnitude_rtn(net, sites, sparsity=0.75)
    total = sum(ct.numel for ct in out.values())
    assert sum(ct.numel - ct.nnz for ct in out.values()) == int(0.75 * total)
    for name, ct in out.items():
        assert torch.equal(net.get_parameter(name).detach(), ct.to_dense())
        assert ct.codebook.numel() == 4 and ct.num_components == 4


def test_kmeans_quantize_takes_nearest_centroid():
    torch.manual_seed(2)
    w = torch.randn(40, 5)
    mask = torch.rand(40, 5) > 0.3
    ct = kmeans_quantize(w, mask, 4, torch.float16)
    expected = kmeans_1d(w[mask], 4).locs.to(torch.float16).float()
    assert torch.equal(ct.codebook, expected)
    values = w[mask]
    nearest = (values[:, None] - ct.codebook[None]).abs().argmin(-1)
    assert torch.equal(ct.codebook[ct.codes], ct.codebook[nearest])


def test_masked_finetune_keeps_the_mask():
    net = _net()
    sites = compressed_sites(net, SITES_SPEC)
    masks = magnitude_masks(net, sites, 0.5)
    masked_finetune(net, masks, _data(), epochs=2, lr=1e-2, batch_size=32)
    for name, mask in masks.items():
        w = net.get_parameter(name).detach()
        assert (w[~mask] == 0).all() and (w[mask] != 0).all()


def test_deep_compression_end_to_end():
    net = _net()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    sites = compressed_sites(net, SITES_SPEC)
    expected_masks = magnitude_masks(net, sites, 0.5)
    out = deep_compression(net, sites, _data(), sparsity=0.5, epochs=1, lr=1e-2, batch_size=32,
                           centroid_fraction=0.5, codebook_dtype=torch.float16)
    for name, ct in out.items():
        assert torch.equal(ct.mask, expected_masks[name])  # the pruned set is fixed after pruning
        assert torch.equal(ct.codebook, ct.codebook.half().float())
        assert torch.equal(net.get_parameter(name).detach(), ct.to_dense())
        assert len(torch.unique(ct.to_dense()[ct.mask])) <= 4
    # the biases were trained too
    assert not torch.equal(net.state_dict()["0.bias"], original["0.bias"])


def test_centroid_finetune_moves_only_codebooks():
    net = _net()
    sites = compressed_sites(net, SITES_SPEC)
    a = deep_compression(net, sites, _data(), sparsity=0.5, epochs=1, lr=1e-2, batch_size=32, centroid_fraction=0.0)
    net = _net()
    b = deep_compression(net, sites, _data(), sparsity=0.5, epochs=1, lr=1e-2, batch_size=32, centroid_fraction=0.5)
    for name in a:
        assert torch.equal(a[name].mask, b[name].mask)


def test_gaussian_prior_spec():
    spec = gaussian_prior_spec({"_default": {"num_components": 8}, "re:fc.*": {"slab_scale": 1.0}, "head": "dense"})
    assert spec["_default"]["spike"] is False and spec["re:fc.*"]["spike"] is False and spec["head"] is None
    assert PriorSpec(spec).settings("re:fc.*").guide.num_components == 8


def test_format_table():
    rows = [
        {"method": "base", "label": "base", "K": None, "sparsity": 0.0, "accuracy": 0.9, "paper_cr": 1.0,
         "honest_cr": 1.0, "model_cr": 1.0, "file_bytes": 1000},
        {"method": "sqs", "label": "SQS", "K": 4, "sparsity": 0.5, "accuracy": 0.88, "bma_accuracy": 0.885,
         "paper_cr": 32.0, "honest_cr": 12.0, "model_cr": None, "file_bytes": 100},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0] == "| method | K | sparsity | accuracy | paper CR | honest CR | file bytes |"
    assert lines[3] == "| SQS | 4 | 50.0% | 88.00% (BMA 88.50%) | 32.00× | 12.00× | 100 |"
