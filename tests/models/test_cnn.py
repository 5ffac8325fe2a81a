import pytest
import torch
from torch.utils.data import TensorDataset

from sqs_pyro.data.fashion_mnist import load_image_data
from sqs_pyro.models.cnn import SmallCNN, build_cnn, resnet18_1ch, resnet50_1ch
from sqs_pyro.run.train_base import evaluate_accuracy, train_classifier


@pytest.mark.parametrize("name", ["small-cnn", "resnet18", "resnet50"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    net = build_cnn(name, num_classes=10, in_channels=1)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_constructors():
    assert build_cnn("small-cnn", 3, 1)(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert isinstance(build_cnn("small_cnn"), SmallCNN)
    assert resnet18_1ch().conv1.kernel_size == (3, 3) and resnet18_1ch().conv1.in_channels == 1
    assert resnet50_1ch(num_classes=7).fc.out_features == 7
    with pytest.raises(ValueError, match="resnet18"):
        build_cnn("vgg")


def _subset(ds, n):
    return TensorDataset(*(t[:n] for t in ds.tensors))


def test_small_cnn_learns_fashion_mnist_subset():
    train, test, info = load_image_data("fashion-mnist")  # falls back to digits when not installed
    torch.manual_seed(0)
    net = SmallCNN(num_classes=info["num_classes"], channels=(8, 16, 32))  # narrow, to keep the test fast
    out = train_classifier(net, _subset(train, 5000), _subset(test, 1000), epochs=1, lr=3e-3, progress=False)
    assert len(out["history"]) == 1
    assert out["test_accuracy"] > 0.7  # 0.81 on Fashion-MNIST
    assert out["test_accuracy"] == evaluate_accuracy(net, _subset(test, 1000))


def test_training_is_deterministic():
    torch.manual_seed(1)
    x, y = torch.randn(300, 1, 28, 28), torch.randint(0, 10, (300,))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = SmallCNN(channels=(4, 8, 8), hidden=16)
        out = train_classifier(net, TensorDataset(x, y), None, epochs=1, batch_size=64, lr=1e-2, progress=False)
        runs.append((out["history"][0]["train_loss"], net.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
