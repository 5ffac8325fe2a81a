"""
Fixtures of the analysis tests: a tiny fitted MLP and a real (tiny) run directory.

Everything runs on one torch thread: on a shared 2-core machine, two intra-op
threads make small tensor operations hundreds of times slower.
"""

import json
import os

import pyro
import pytest
import torch

TINY_ARCH = "tiny-test-cnn"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit_tiny_mlp(steps=20, n=128, num_components=4, seed=0, window="layer", spike=True):
    """A 2-layer MLP SQSModel + SQSGuide after a few SVI steps on random data."""
    from sqs_pyro import SQSELBO
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import Categorical, SQSModel

    pyro.settings.set(module_local_params=True)
    torch.manual_seed(seed)
    x = torch.randn(n, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    settings = {"num_components": num_components, "inclusion_prob": 0.5, "window": window, "spike": spike}
    if window != "layer":
        settings["blocks"] = 3
    model = SQSModel(net, {"_default": settings}, Categorical(), num_data=n)
    guide = SQSGuide(model)
    with torch.no_grad():  # a few pruned weights, so that both gate states occur
        guide.params_of("0.weight").mask[:2] = False
    opt = torch.optim.Adam(list(guide.parameters()) + [p for _, p in model.point_parameters()], lr=2e-3)
    elbo = SQSELBO()
    for _ in range(steps):
        opt.zero_grad()
        elbo.differentiable_loss(model, guide, x, y).backward()
        opt.step()
    return model, guide, x, y


@pytest.fixture
def fit_tiny():
    """The :func:`fit_tiny_mlp` factory, for tests that need other settings."""
    return fit_tiny_mlp


@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return fit_tiny_mlp()


@pytest.fixture(scope="session")
def tiny_arch():
    """Registers a very small SmallCNN under the name ``tiny-test-cnn`` for the session."""
    from sqs_pyro.models import cnn

    mp = pytest.MonkeyPatch()
    mp.setitem(cnn.CNN_REGISTRY, TINY_ARCH,
               lambda num_classes=10, in_channels=1: cnn.SmallCNN(num_classes, in_channels, channels=(4, 8, 8), hidden=16))
    yield TINY_ARCH
    mp.undo()


def make_run_dir(out, arch, n_train=128, n_test=64):
    """A real run directory: base network, SQS compression (SQSTrainer), evaluation, export."""
    from sqs_pyro.run import pipeline
    from sqs_pyro.run.config import RunConfig
    from sqs_pyro.export import save
    from sqs_pyro.guides import greedy_map, hard_assignment

    cfg = RunConfig.from_dict({
        "out_dir": str(out), "device": "cpu", "seed": 0,
        "data": {"dataset": "digits", "train_subset": n_train, "test_subset": n_test, "batch_size": 32,
                 "eval_batch_size": 64},
        "model": {"arch": arch, "base_epochs": 1},
        "compress": {"epochs": 1.0, "lr": 1e-3, "gate_lr": 1e-3, "sparsity": 0.5, "prune_start": 0.0,
                     "prune_end": 0.5, "log_every": 1, "checkpoint_every": 100},
        "eval": {"num_samples": 2},
        "prior": {"_default": {"num_components": 4}},
    })
    os.makedirs(out, exist_ok=True)
    cfg.save(os.path.join(out, "config.toml"))
    device = torch.device("cpu")
    train, test, info = pipeline.load_data(cfg)
    net, base_acc = pipeline.base_network(cfg, train, test, info, device, progress=False)
    model, guide, _ = pipeline.compress(cfg, net, train, device, progress=False)
    metrics = pipeline.evaluate_posterior(cfg, model, guide, test, device)
    compressed = hard_assignment(model, guide, codebook_dtype=torch.float16)
    dense = {k: v for k, v in greedy_map(model, guide).state_dict().items() if k not in compressed}
    save(os.path.join(out, "compressed.safetensors"), compressed, dense, codebook_dtype="float16",
         metadata={"run_identity": model.run_identity})
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"base_accuracy": base_acc, "sqs": metrics}, f)
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_arch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            return make_run_dir(tmp_path_factory.mktemp("run"), tiny_arch)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def report_path(run_dir, tmp_path_factory):
    """The HTML report of the run directory (written once for the session)."""
    from sqs_pyro.analysis.report import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return write_report(run_dir, tmp_path_factory.mktemp("report") / "report.html", max_layers=2)
    finally:
        torch.set_num_threads(threads)
