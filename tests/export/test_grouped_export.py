"""Positional (per-channel / per-column-block) codebooks through the file, bit-exactly (issue 16)."""

import math

import pytest
import torch

from sqs_pyro import PriorSpec
from sqs_pyro.export import CompressedTensor, load, save, size_report
from sqs_pyro.guides import SQSGuide, hard_assignment
from sqs_pyro.models import Gaussian, SQSModel


def _guide(net, **settings):
    spec = PriorSpec({"_default": {"num_components": 16, **settings}})
    return SQSModel(net, spec, Gaussian(), num_data=10)


@pytest.mark.parametrize("settings", [{"window": "channel"}, {"window": "columns", "group_size": 64},
                                      {"window": "channel", "tails": "full", "outlier_factor": 3.0}])
def test_thousands_of_groups_round_trip_bit_exactly(tmp_path, settings):
    torch.manual_seed(0)
    net = torch.nn.Linear(192, 1536, bias=False)
    with torch.no_grad():
        net.weight[7, 3] = 5.0
    model = _guide(net, **settings)
    guide = SQSGuide(model, gates="hard")
    with torch.no_grad():  # prune a third of the weights
        guide.params_of("weight").mask.copy_(torch.rand(1536, 192) > 1 / 3)
    ct = hard_assignment(model, guide, prune="mask", codebook_dtype=torch.float16)["weight"]
    groups = 1536 if settings["window"] == "channel" else 1536 * 3
    assert ct.codebook.numel() == groups * 16 and ct.bits_per_code == 4
    if "tails" in settings:
        assert ct.num_outliers > 0 and 7 * 192 + 3 in ct.outlier_index.tolist()
    else:
        assert ct.num_outliers == 0
    dense = ct.to_dense()
    for entropy_coded in (False, True):
        path = tmp_path / f"w{entropy_coded}.safetensors"
        manifest = save(path, {"weight": ct}, entropy_coded=entropy_coded)
        back = load(path)[0]["weight"]
        assert back.group_size == ct.group_size and back.num_components == 16
        assert torch.equal(back.to_dense(), dense)
        assert torch.equal(back.codebook, ct.codebook)
        # honest accounting: every codebook (fp16), every code, the mask and every outlier (value + position)
        parts = manifest["compressed"]["weight"]["parts"]
        assert parts["codebook"] == groups * 16 * 2
        if not entropy_coded:
            assert parts["codes"] == math.ceil(ct.nnz * 4 / 8)
        if ct.num_outliers:
            assert parts["outlier_values"] == 4 * ct.num_outliers
            assert parts["outlier_index"] == math.ceil(ct.num_outliers * math.ceil(math.log2(ct.numel)) / 8)
        report = size_report(manifest)
        layer = report.layers["weight"] if isinstance(report.layers, dict) else report.layers[0]
        assert layer.part_bytes == parts
    # every kept weight takes a value of its own row's (fp16-rounded) codebook
    locs = guide.params_of("weight").locs.detach().half().float()
    for row in (0, 11, 1535):
        cols = ct.mask[row] if settings["window"] == "channel" else ct.mask[row] & (torch.arange(192) >= 128)
        g = row if settings["window"] == "channel" else row * 3 + 2
        assert torch.isin(dense[row, cols], locs[g]).all()


def test_a_dense_site_pays_no_mask_bits(tmp_path):
    net = torch.nn.Linear(64, 256, bias=False)
    model = _guide(net, window="channel")
    ct = hard_assignment(model, SQSGuide(model), prune="mask", codebook_dtype=torch.float16)["weight"]
    assert ct.nnz == ct.numel
    manifest = save(tmp_path / "w.safetensors", {"weight": ct}, entropy_coded=False)
    assert manifest["compressed"]["weight"]["parts"]["mask"] <= 8  # a position code of nothing, not 1 bit a weight


def test_positional_codes_are_checked():
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs num_components"):
        CompressedTensor((2, 4), torch.zeros(4), torch.zeros(8, dtype=torch.long), mask, group_size=4)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2\)"):
        CompressedTensor((2, 4), torch.zeros(4), torch.full((8,), 2), mask, num_components=2, group_size=4)
    ct = CompressedTensor((2, 4), torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]), mask,
                          num_components=2, group_size=4)
    assert ct.to_dense().tolist() == [[0, 1, 1, 0], [3, 2, 2, 3]]
