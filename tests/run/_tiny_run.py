"""
A run of the command line small enough for reliability tests: 8x8 digits upscaled (128 training images),
a tiny CNN registered as ``tiny-test-cnn``, 8 SVI steps, a checkpoint every 2 steps. Run as a script it
registers the network and calls the CLI (for tests that kill it): ``python _tiny_run.py ARGS...``.
"""

import os
import re
import sys

TINY_ARCH = "tiny-test-cnn"

CONFIG = """\
seed = 0
device = "cpu"

[data]
dataset = "digits"
train_subset = 128
test_subset = 64
batch_size = 16
eval_batch_size = 64

[model]
arch = "tiny-test-cnn"
base_epochs = 1

[compress]
epochs = 1.0
lr = 0.001
gate_lr = 0.01
sparsity = 0.5
prune_start = 0.0
prune_end = 0.5
checkpoint_every = 2
log_every = 1

[eval]
num_samples = 2

[export]
entropy_coded = false

[prior._default]
num_components = 4

[prior]
"classifier.4" = "dense"
"""


def register_tiny_arch():
    """Register the tiny CNN (idempotent); returns its name."""
    from sqs_pyro.models import cnn

    cnn.CNN_REGISTRY.setdefault(
        TINY_ARCH, lambda num_classes=10, in_channels=1: cnn.SmallCNN(num_classes, in_channels, channels=(4, 8, 8), hidden=16)
    )
    return TINY_ARCH


def write_config(directory, **extra):
    """Write the tiny config (with ``extra`` appended as TOML lines) to ``directory/tiny.toml``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tiny.toml")
    text = CONFIG
    for k, v in extra.items():  # top-level keys replace the tiny config's own
        text = re.sub(rf"^{k} = .*$", f"{k} = {v}", text, count=1, flags=re.M) if re.search(rf"^{k} = ", text, re.M) \
            else f"{k} = {v}\n" + text
    with open(path, "w") as f:
        f.write(text)
    return path


def cli(argv):
    """``sqs_pyro.run.cli.main`` with the tiny network registered and one torch thread."""
    import torch

    from sqs_pyro.run.cli import main

    register_tiny_arch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(argv) + ["--no-progress"] if argv and not argv[0] in ("report", "plot") else list(argv))
    finally:
        torch.set_num_threads(threads)


def finished_run(root):
    """A tiny run compressed and exported under ``root/run`` (config in ``root/tiny.toml``); returns its path."""
    run = os.path.join(root, "run")
    cfg = write_config(root)
    assert cli(["compress", "--config", cfg, "--out", run]) == 0
    assert cli(["export", "--out", run]) == 0
    return run


def tensors_of(path):
    """Every tensor of a checkpoint, flattened: ``{"guide/...": tensor}`` (for bit-for-bit comparisons)."""
    from sqs_pyro.run.checkpoint import load_checkpoint

    out = {}

    def walk(node, prefix):
        import torch

        if torch.is_tensor(node):
            out[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{prefix}/{i}")

    state = load_checkpoint(path)
    for key in ("guide", "net", "optimizer", "step"):
        walk(state[key], key)
    out["step"] = state["step"]
    return out


def assert_same_tensors(a, b):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


if __name__ == "__main__":
    register_tiny_arch()
    import time

    import torch

    if os.environ.get("TINY_RUN_STEP_SECONDS"):  # slow steps, so that a test can kill the run mid-way
        from sqs_pyro.run.trainer import SQSTrainer

        step, delay = SQSTrainer.step, float(os.environ["TINY_RUN_STEP_SECONDS"])
        SQSTrainer.step = lambda self: (time.sleep(delay), step(self))[1]

    torch.set_num_threads(1)
    from sqs_pyro.run.cli import main

    sys.exit(main(sys.argv[1:]))
