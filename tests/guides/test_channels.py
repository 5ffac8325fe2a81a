import pytest
import torch

from sqs_pyro import PriorSpec
from sqs_pyro.guides import Grouping, SQSGuide, build_grouping
from sqs_pyro.guides.channels import channel_groups, column_groups, group_outliers
from sqs_pyro.models import Gaussian, SQSModel
from sqs_pyro.prior_spec import GuideSettings


def test_channel_groups_are_rows():
    w = torch.randn(5, 3, 2, 2)  # a conv: 5 output channels of 12 weights
    g = channel_groups(w)
    assert g.num_groups == 5 and g.group_size == 12 and g.kind == "channel"
    assert torch.equal(g.index, torch.arange(5).reshape(5, 1, 1, 1).expand_as(w))
    assert torch.equal(g.matrix(w), w.reshape(5, 12))


def test_column_groups_cut_each_row():
    w = torch.randn(3, 8)
    g = column_groups(w, 2)
    assert g.num_groups == 12
    assert g.index[1].tolist() == [4, 4, 5, 5, 6, 6, 7, 7]
    # row g of matrix() holds exactly the weights with index g
    for k in range(12):
        assert torch.equal(g.matrix(w)[k], w[g.index == k])


def test_group_size_must_divide_columns_with_a_hint():
    hint = r"group_size=128 does not divide the 576 columns.*use one of \[144, 96, 72, 64\]"
    with pytest.raises(ValueError, match=hint):
        column_groups(torch.zeros(4, 576), 128)
    net = torch.nn.Linear(576, 4)
    with pytest.raises(ValueError, match=r"group_size=128 does not divide the 576 input columns of module ''"):
        PriorSpec({"_default": {"window": "columns", "group_size": 128}}).resolve(net)
    assert PriorSpec({"_default": {"window": "columns", "group_size": 64}}).resolve(net)["weight"].guide.group_size == 64


def test_prior_spec_accepts_the_new_windows_and_rejects_bad_values():
    s = GuideSettings(window="channel", init="fisher")
    assert GuideSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="window='rows' is invalid"):
        GuideSettings(window="rows")
    with pytest.raises(ValueError, match="group_size=0 is invalid"):
        GuideSettings(window="columns", group_size=0)
    with pytest.raises(ValueError, match="init='gptq' is invalid"):
        GuideSettings(init="gptq")


def test_prior_spec_toml_round_trip(tmp_path):
    spec = PriorSpec({"_default": {"num_components": 16, "window": "channel", "tails": "full",
                                   "outlier_factor": 8.0, "init": "fisher"},
                      "re:.*down_proj": {"window": "columns", "group_size": 64}})
    spec.to_file(tmp_path / "p.toml")
    assert PriorSpec.from_file(tmp_path / "p.toml") == spec


def test_outliers_per_group():
    w = torch.randn(6, 100)
    w[2, 7], w[4, 50] = 40.0, -40.0
    fp = group_outliers(w, 5.0)
    assert fp.sum() == 2 and fp[2, 7] and fp[4, 50]
    g = build_grouping(w, GuideSettings(window="channel", tails="full"))
    assert torch.equal(g.full_precision, fp)
    assert build_grouping(w, GuideSettings(window="channel")).full_precision is None


def test_guide_codebooks_per_channel_match_each_rows_kmeans():
    torch.manual_seed(0)
    net = torch.nn.Linear(40, 6)
    with torch.no_grad():
        net.weight[3, 5] = 9.0  # an outlier: kept out of row 3's codebook
    spec = PriorSpec({"_default": {"num_components": 4, "window": "channel", "tails": "full"}})
    guide = SQSGuide(SQSModel(net, spec, Gaussian(), num_data=10))
    p = guide.params_of("weight")
    assert p.locs.shape == (6, 4) and p.grouping.full_precision[3, 5]
    assert float(p.locs[3].detach().max()) < 1.0  # the outlier pulled no centre
    for row in range(6):  # every centre is the mean of the row's weights nearest to it
        x = net.weight[row].detach()[~p.grouping.full_precision[row]]
        nearest = (x.unsqueeze(1) - p.locs[row]).abs().argmin(1)
        for k in range(4):
            if (nearest == k).any():
                assert torch.allclose(p.locs[row, k], x[nearest == k].mean(), atol=1e-5)


def test_a_step_with_thousands_of_groups_is_finite():
    import pyro

    from sqs_pyro import SQSELBO

    pyro.settings.set(module_local_params=True)
    net = torch.nn.Linear(64, 1536)
    model = SQSModel(net, PriorSpec({"_default": {"num_components": 16, "window": "channel"}}), Gaussian(),
                     num_data=10)
    guide = SQSGuide(model, gates="hard")
    loss = SQSELBO()(model, guide)(torch.randn(4, 64), torch.randn(4, 1536))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(guide.params_of("weight").locs.grad).all()


def test_positional_grouping_checks_its_size():
    with pytest.raises(ValueError, match="do not cover"):
        Grouping(torch.Size([4, 4]), torch.zeros(4, 4, dtype=torch.long), 3, group_size=4)
