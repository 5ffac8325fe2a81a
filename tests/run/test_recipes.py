"""The default recipe's pieces (sqs_pyro/run/recipes.py): each does what it claims."""

import pyro
import pytest
import torch

from sqs_pyro import SQSELBO
from sqs_pyro.run.config import CompressConfig, RunConfig
from sqs_pyro.guides import SQSGuide, greedy_map
from sqs_pyro.guides.kmeans import kmeans_1d
from sqs_pyro.models import Categorical, SQSModel
from sqs_pyro.run.recipes import RECIPE_FIELDS, RECIPES
from sqs_pyro.run.trainer import SQSTrainer, TensorData


def problem(n=512, seed=0, k=4):
    pyro.settings.set(module_local_params=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):  # a trained base network
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model = SQSModel(net, {"_default": {"num_components": k}}, Categorical(), num_data=n)
    return model, SQSGuide(model), TensorData(x, y)


def accuracy(net, data):
    with torch.no_grad():
        return (net(data.x).argmax(-1) == data.y).float().mean().item()


# -- configuration ---------------------------------------------------------------------------------
def test_every_recipe_sets_the_same_fields():
    assert all(set(r) == set(RECIPE_FIELDS) for r in RECIPES.values())


def test_unset_fields_come_from_the_recipe_and_explicit_ones_win():
    assert CompressConfig().resolved().gates == "hard"
    paper = CompressConfig(recipe="paper").resolved()
    assert (paper.score, paper.gates, paper.anchors, paper.refit_codebooks) == ("rho", "learned", "frozen", False)
    mixed = CompressConfig(recipe="paper", score="anchor").resolved()
    assert (mixed.score, mixed.gates) == ("anchor", "learned")


def test_switching_recipe_by_override_switches_every_unset_field():
    cfg = RunConfig().override(["compress.recipe='paper'"])
    assert cfg.compress.resolved().prune_end == pytest.approx(9 / 11)
    assert "score" not in cfg.to_dict()["compress"]  # the file keeps what the user set, not the preset
    with pytest.raises(ValueError, match="compress.recipe"):
        RunConfig().override(["compress.recipe='fast'"])
    with pytest.raises(ValueError, match="gates"):
        RunConfig().override(["compress.gates='soft'"])


# -- straight-through anchors ----------------------------------------------------------------------
def test_straight_through_keeps_the_value_and_sends_gradients_to_every_unpruned_anchor():
    model, guide, data = problem()
    site = model.sites["0.weight"]
    guide.params_of("0.weight").mask[:, :4] = False
    plain = guide.posterior("0.weight").mean.detach()
    site.anchor.requires_grad_(True)
    guide.configure(straight_through=True)
    mean = guide.posterior("0.weight").mean
    assert torch.equal(mean.detach(), plain)
    (mean * torch.randn_like(mean)).sum().backward()
    grad = site.anchor.grad
    kept = guide.params_of("0.weight").mask
    assert bool((grad[kept] != 0).all()) and bool((grad[~kept] == 0).all())


def test_without_straight_through_one_hot_anchors_get_no_gradient():
    model, guide, data = problem()
    site = model.sites["0.weight"]
    site.anchor.requires_grad_(True)
    mean = guide.posterior("0.weight").mean
    mean.sum().backward()
    assert (site.anchor.grad != 0).float().mean() < 0.05  # only weights on component boundaries


def test_straight_through_reaches_the_anchors_through_relaxed_draws_too():
    # The sampled plug-in: same draw as without straight-through, gradient = the drawn gate.
    model, guide, data = problem()
    site = model.sites["0.weight"]
    site.anchor.requires_grad_(True)
    with torch.random.fork_rng():
        plain = guide.posterior("0.weight").rsample().detach()
    guide.configure(straight_through=True)
    q = guide.posterior("0.weight").base_dist
    with torch.random.fork_rng():
        draw = q.rsample()
    with torch.random.fork_rng():
        gate, _ = q._relaxed_parts()
    assert torch.equal(draw.detach(), plain)
    draw.sum().backward()
    torch.testing.assert_close(site.anchor.grad, gate.detach())


def test_straight_through_needs_the_fused_posterior():
    model, guide, _ = problem()
    guide.configure(straight_through=True)
    with pytest.raises(ValueError, match="fused"):
        guide.posterior("0.weight", fused=False)


# -- hard gates ------------------------------------------------------------------------------------
def test_hard_gates_are_the_mask():
    model, guide, _ = problem()
    p = guide.params_of("0.weight")
    p.mask[0] = False
    guide.configure(gates="hard")
    assert torch.equal(p.gate_probs(), p.mask.float())


def test_default_recipe_survivors_keep_their_gates_and_training_equals_export(tmp_path):
    model, guide, data = problem()
    cfg = CompressConfig(epochs=3.0, sparsity=0.75, lr=1e-2, anchor_lr=1e-2, checkpoint_every=10**6)
    trainer = SQSTrainer(model, guide, data, cfg, out_dir=str(tmp_path), batch_size=64, progress=False)
    trainer.run()
    for name in model.sites:
        p = guide.params_of(name)
        assert bool((p.gate_probs()[p.mask] == 1).all())
    assert trainer.mask_sparsity() == pytest.approx(0.75, abs=0.01)
    # the network the likelihood saw (posterior mean) is the exported one
    exported = greedy_map(model, guide)
    for name in model.sites:
        assert torch.allclose(exported.get_parameter(name), guide.posterior(name).mean.detach())


# -- the score ranks by what it claims ---------------------------------------------------------------
def test_anchor_score_prunes_the_smallest_magnitudes(tmp_path):
    model, guide, data = problem()
    cfg = CompressConfig(epochs=1.0, sparsity=0.5, anchors="frozen", prune_end=0.0)
    trainer = SQSTrainer(model, guide, data, cfg, out_dir=str(tmp_path), batch_size=64, progress=False)
    trainer.prune(1)
    w = torch.cat([s.anchor.detach().abs().reshape(-1) for s in model.sites.values()])
    kept = torch.cat([guide.params_of(n).mask.reshape(-1) for n in model.sites])
    assert kept.float().mean() == pytest.approx(0.5, abs=0.01)
    assert w[kept].min() >= w[~kept].max()


# -- codebook refit ---------------------------------------------------------------------------------
def test_refit_is_k_means_of_the_survivors():
    model, guide, _ = problem()
    p, anchor = guide.params_of("0.weight"), model.sites["0.weight"].anchor.detach()
    p.mask.copy_(anchor.abs() > anchor.abs().median())
    guide.refit_codebooks()
    expected = kmeans_1d(anchor[p.mask], 4)
    assert torch.allclose(p.locs.detach().reshape(-1), expected.locs)
    assert torch.allclose(p.scales.detach().reshape(-1), expected.scales)
    assert p.locs.detach().abs().min() > anchor.abs().median() * 0.99  # no centroid among the pruned


# -- learning-rate schedule ------------------------------------------------------------------------
def test_cosine_schedule_decays_to_zero(tmp_path):
    model, guide, data = problem()
    trainer = SQSTrainer(model, guide, data, CompressConfig(epochs=1.0), out_dir=str(tmp_path), batch_size=64,
                         progress=False)
    assert trainer.lr_factor(0) == 1.0 and trainer.lr_factor(trainer.total_steps) == pytest.approx(0.0)
    trainer.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.cfg.lr)


# -- the recipe with few steps ------------------------------------------------------------------------
def test_default_recipe_beats_the_paper_recipe_in_a_short_run(tmp_path):
    """A fraction of the paper's budget (a few dozen steps) at 80% sparsity, K = 4."""
    result = {}
    for recipe in ("sqs", "paper"):
        model, guide, data = problem(seed=1)
        cfg = CompressConfig(recipe=recipe, epochs=4.0, sparsity=0.8, lr=1e-2, anchor_lr=1e-2, gate_lr=1e-2,
                             checkpoint_every=10**6)
        SQSTrainer(model, guide, data, cfg, out_dir=str(tmp_path / recipe), batch_size=64, progress=False).run()
        result[recipe] = accuracy(greedy_map(model, guide), data)
    assert result["sqs"] > result["paper"] + 0.1, result


def test_elbo_is_unchanged_by_straight_through():
    model, guide, data = problem()
    elbo = SQSELBO(plug_in="mean", kl_weight=1e-3)
    before = elbo.loss(model, guide, data.x, data.y)
    model.sites["0.weight"].anchor.requires_grad_(True)
    guide.configure(straight_through=True)
    assert elbo.loss(model, guide, data.x, data.y) == pytest.approx(before)
