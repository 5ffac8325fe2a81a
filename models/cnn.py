"""
Base networks for 28x28 single-channel images (Fashion-MNIST).

:class:`SmallCNN` is the CPU-sized base model; :func:`resnet18_1ch` and
:func:`resnet50_1ch` are torchvision ResNets whose stem is adapted to small
inputs (3x3 stride-1 convolution, no max-pool), for GPU runs. All weights are
randomly initialized: nothing is downloaded.

Example::

    >>> import torch
    >>> net = build_cnn("small-cnn", num_classes=10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

import torch
import torch.nn as nn
import torchvision


class SmallCNN(nn.Module):
    """
    A small BatchNorm CNN for 28x28 inputs:
    conv(c1)-pool-conv(c2)-pool-conv(c3)-fc128-fc (3x3 convolutions, each
    followed by BatchNorm and ReLU; ``channels=(c1, c2, c3)``).

    With the default ``channels=(32, 64, 64)`` it has 0.46M parameters and
    reaches 91.1% / 92.4% Fashion-MNIST test accuracy after 2 / 3 epochs of
    :func:`sqs_pyro.run.train_base.train_classifier` (lr 3e-3, batch 128, seed 0;
    about 325 CPU-seconds per epoch with 2 threads).
    ``channels=(16, 32, 64)`` is 1.4x cheaper and reaches 90.8% / 91.7%.
    Activations after the first convolution are kept channels-last, which
    makes CPU training about 1.4x faster; results do not depend on it.

    :param int num_classes: number of output logits.
    :param int in_channels: input channels.
    :param tuple channels: widths of the three convolutions.
    :param int hidden: width of the fully connected layer.
    :param float dropout: dropout before the last layer.
    """

    def __init__(self, num_classes=10, in_channels=1, channels=(32, 64, 64), hidden=128, dropout=0.25):
        super().__init__()
        c1, c2, c3 = channels

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, c1),
            nn.MaxPool2d(2),  # 14x14
            *block(c1, c2),
            nn.MaxPool2d(2),  # 7x7
            *block(c2, c3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features[0](x).contiguous(memory_format=torch.channels_last)
        x = self.features[1:](x)
        return self.classifier(x)


def _small_input_resnet(net, in_channels):
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def resnet18_1ch(num_classes=10, in_channels=1):
    """torchvision ResNet-18 (random init) with a 3x3 stride-1 stem and no max-pool, for 28x28 inputs."""
    return _small_input_resnet(torchvision.models.resnet18(weights=None, num_classes=num_classes), in_channels)


def resnet50_1ch(num_classes=10, in_channels=1):
    """torchvision ResNet-50 (random init) with a 3x3 stride-1 stem and no max-pool, for 28x28 inputs."""
    return _small_input_resnet(torchvision.models.resnet50(weights=None, num_classes=num_classes), in_channels)


CNN_REGISTRY = {
    "small-cnn": SmallCNN,
    "resnet18": resnet18_1ch,
    "resnet50": resnet50_1ch,
}


def build_cnn(name, num_classes=10, in_channels=1):
    """
    Builds a base network by name: one of ``"small-cnn"``, ``"resnet18"``, ``"resnet50"``.

    :raises ValueError: for an unknown name (the message lists the known ones).
    """
    key = name.lower().replace("_", "-")
    if key not in CNN_REGISTRY:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(CNN_REGISTRY)}")
    return CNN_REGISTRY[key](num_classes=num_classes, in_channels=in_channels)
