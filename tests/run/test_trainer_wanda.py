"""The Wanda pruning score of the trainer (``compress.score = "wanda"``; Sun et al. 2023)."""

import pyro
import pytest
import torch

from sqs_pyro.run.checkpoint import load_checkpoint
from sqs_pyro.run.config import CompressConfig
from sqs_pyro.guides import SQSGuide, input_norms, wanda_scores
from sqs_pyro.models import Categorical, SQSModel
from sqs_pyro.run.trainer import SQSTrainer, TensorData


def _problem(n=128):
    """Feature 0 has tiny weights but huge inputs; the others have large weights on small inputs."""
    pyro.settings.set(module_local_params=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g) * torch.tensor([100.0, 1.0, 1.0, 1.0])
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.05, 1.0, -1.5, 2.0], [-0.04, -1.2, 1.1, 0.9]]))
    model = SQSModel(net, {"_default": {"num_components": 2}}, Categorical(), num_data=n)
    return model, SQSGuide(model), TensorData(x, y), x


def _trainer(tmp_path, score, **kwargs):
    model, guide, data, _ = _problem()
    cfg = CompressConfig(epochs=2.0, lr=1e-2, sparsity=0.25, prune_start=0.0, prune_end=0.5, score=score,
                         checkpoint_every=2, log_every=2)
    return SQSTrainer(model, guide, data, cfg, out_dir=str(tmp_path), batch_size=32, progress=False, **kwargs)


def test_input_norms_are_feature_norms_over_all_tokens():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    batches = [torch.randn(2, 5, 3), torch.randn(4, 3)]  # any leading token dims
    norms = input_norms(net, batches, ["0.weight", "2.weight"])
    tokens = torch.cat([b.reshape(-1, 3) for b in batches])
    assert torch.allclose(norms["0.weight"], tokens.norm(dim=0))
    hidden = torch.relu(net[0](tokens))
    assert torch.allclose(norms["2.weight"], hidden.norm(dim=0), atol=1e-6)
    assert not net[0]._forward_hooks  # hooks removed
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3))
    x = torch.randn(4, 2, 5, 5)
    n = input_norms(conv, [x], ["0.weight"])["0.weight"]
    assert torch.allclose(n, x.transpose(0, 1).reshape(2, -1).norm(dim=1))
    assert wanda_scores(conv[0].weight, n).shape == conv[0].weight.shape
    with pytest.raises(ValueError, match="not the weight of a compressible module"):
        input_norms(net, batches, ["1.weight"])


def test_a_column_with_large_inputs_keeps_its_weights(tmp_path):
    wanda = _trainer(tmp_path / "w", "wanda")
    _, _, _, x = _problem()
    steps = min(wanda.calibration_batches, wanda.steps_per_epoch)
    first = torch.cat([x[wanda.batch_indices(t)] for t in range(steps)])
    assert torch.allclose(wanda.input_norms["0.weight"], first.norm(dim=0), rtol=1e-5)
    kept = wanda.scores()["0.weight"].reshape(-1).topk(6).indices.tolist()  # prune the 2 lowest of 8
    assert 0 in kept and 4 in kept  # both weights of feature 0 survive
    by_magnitude = _trainer(tmp_path / "a", "anchor").scores()["0.weight"].reshape(-1).topk(6).indices.tolist()
    assert 0 not in by_magnitude and 4 not in by_magnitude
    wanda.run()
    assert wanda.guide.params_of("0.weight").mask[:, 0].all()


def test_wanda_norms_are_checkpointed_and_restored(tmp_path):
    a = _trainer(tmp_path, "wanda")
    a.run()
    saved = load_checkpoint(a.checkpoint_path)["input_norms"]
    assert torch.equal(saved["0.weight"], a.input_norms["0.weight"])
    b = _trainer(tmp_path, "wanda", input_norms={"0.weight": torch.ones(4)})
    b.load()
    assert torch.equal(b.input_norms["0.weight"], saved["0.weight"])
    with pytest.raises(ValueError, match="missing"):
        _trainer(tmp_path / "x", "wanda", input_norms={})
