"""
The stages of a run behind the command line: base model, SQS compression,
evaluation, export and the reload check. Each stage reads and writes the run
directory, so each is also a CLI subcommand; :mod:`sqs_pyro.run.main_job` runs
them in order, with the baselines.

The run directory's layout is in :mod:`sqs_pyro.run.files`.

Example::

    >>> from sqs_pyro.run.config import RunConfig, smoke_config
    >>> cfg = smoke_config(RunConfig(out_dir="/tmp/sqs-doc"))          # doctest: +SKIP
    >>> train, test, info = load_data(cfg)                              # doctest: +SKIP
    >>> net, _ = base_network(cfg, train, test, info, torch.device("cpu"))  # doctest: +SKIP
    >>> model, guide, _ = compress(cfg, net, train, torch.device("cpu"))    # doctest: +SKIP
"""

import os

import pyro
import torch

from ..data import load_image_data
from ..errors import InputFileError
from ..export import export_checked
from ..guides import SQSGuide, compressed_weights, greedy_map, hard_assignment, sample_networks
from ..models import Categorical, SQSModel
from ..models.cnn import build_cnn
from .checkpoint import CheckpointError, checkpoint_info, load_checkpoint, save_checkpoint, state_digest
from .distributed import barrier, is_main_process, local_device
from .files import BASE_NAME, CHECKPOINT_NAME, EXPORT_NAME
from .fit import fit_sqs
from .identity import check_identity, run_identity
from .train_base import evaluate_accuracy, train_classifier
from .trainer import TensorData



def resolve_device(name):
    """``auto`` -> cuda if available else cpu; nothing hard-codes CUDA."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
    return local_device(torch.device(name))


def _subset(ds, n, seed):
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n]
    return torch.utils.data.TensorDataset(*(t[idx] for t in ds.tensors))


def load_data(cfg):
    """Train and test sets of the run (subsets when asked), and their description."""
    train, test, info = load_image_data(cfg.data.dataset)
    train = _subset(train, cfg.data.train_subset, cfg.seed)
    test = _subset(test, cfg.data.test_subset, cfg.seed + 1)
    return train, test, info


def build_net(cfg, info):
    return build_cnn(cfg.model.arch, num_classes=info["num_classes"], in_channels=info["input_shape"][0])


def seed_everything(seed):
    """Seed torch, Pyro, numpy and Python's ``random``: each stage starts from the seed alone, so a run gives
    the same result whether its base network was trained in it or loaded, and whatever ran before."""
    pyro.set_rng_seed(seed)


def base_network(cfg, train, test, info, device, progress=True, train_if_missing=True):
    """Load the run's base network, or train it (and save it atomically) if there is none.

    The file is safetensors + JSON (:func:`~sqs_pyro.run.checkpoint.save_checkpoint`), checksum verified on load;
    ``model.base_checkpoint`` must exist (a wrong path is an error, not a new training).
    """
    path = cfg.model.base_checkpoint or os.path.join(cfg.out_dir, BASE_NAME)
    if cfg.model.base_checkpoint and not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise InputFileError(f"model.base_checkpoint = {path!r} {what}: give a base network file written by "
                             "sqs-pyro train-base, or remove the key to train one in the run directory")
    if os.path.isdir(path):
        raise InputFileError(f"base network {path} is a directory, expected a file")
    seed_everything(cfg.seed)
    net = build_net(cfg, info).to(device)
    if not is_main_process():  # under torchrun, process 0 trains the base network
        barrier()
    if os.path.exists(path):
        state = load_checkpoint(path, map_location=device)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise InputFileError(f"base network {path} holds no 'state_dict': not a base network file")
        if state.get("arch") != cfg.model.arch:
            raise InputFileError(f"base checkpoint {path} is a {state.get('arch')!r}, the config asks for "
                                 f"{cfg.model.arch!r}")
        try:
            net.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise InputFileError(f"base network {path} does not fit a {cfg.model.arch}: {e}") from None
        if is_main_process():
            barrier()
        return net, state["test_accuracy"]
    if not train_if_missing:
        raise FileNotFoundError(f"no base network at {path}: run train-base or compress first")
    torch.manual_seed(cfg.seed)
    result = train_classifier(net, train, test, epochs=cfg.model.base_epochs, lr=cfg.model.base_lr,
                              batch_size=cfg.data.batch_size, device=device, seed=cfg.seed, progress=progress)
    accuracy = evaluate_accuracy(net, test, device=device)
    if is_main_process():
        save_checkpoint(path, {"arch": cfg.model.arch, "state_dict": net.state_dict(), "test_accuracy": accuracy,
                               "dataset": info["name"], "history": result.get("history")})
    barrier()
    return net, accuracy


def identity_of(cfg, net):
    """The run identity of ``cfg`` with base network ``net`` (its weights before compression)."""
    return run_identity(cfg, state_digest(net.state_dict()))


def _module_local_params():
    # guide parameters live in the guide (not Pyro's global store), so several
    # guides with the same site names can coexist and torch optimizers see them
    pyro.settings.set(module_local_params=True)


def build_model_and_guide(cfg, net, num_data):
    """The Pyro model (network + prior spec + likelihood) and the SQS guide."""
    _module_local_params()
    model = SQSModel(net, cfg.prior, Categorical(), num_data=num_data)
    return model, SQSGuide(model)


def compress(cfg, net, train, device, resume=False, progress=True):
    """Fit the SQS posterior (paper schedule or posterior pruning) with the run's config
    (:func:`~sqs_pyro.run.fit.fit_sqs`). Returns ``(model, guide, trainer)``."""
    identity = identity_of(cfg, net)
    seed_everything(cfg.seed)
    _module_local_params()
    x, y = train.tensors
    fit = fit_sqs(net, cfg.prior, Categorical(), TensorData(x, y), cfg.compress, out_dir=cfg.out_dir,
                  batch_size=cfg.data.batch_size, seed=cfg.seed, num_data=len(train), device=device,
                  to_device=lambda b: (b[0].to(device), b[1].to(device)), progress=progress, resume=resume,
                  identity=identity)
    return fit.model, fit.guide, fit.trainer


def load_compressed_run(cfg, net, num_data, device):
    """Rebuild model and guide from a finished run's checkpoint (its run identity checked against ``cfg``
    and ``net``)."""
    identity = identity_of(cfg, net)
    path = os.path.join(cfg.out_dir, CHECKPOINT_NAME)
    ckpt = load_checkpoint(path, map_location=device)
    check_identity(ckpt.get("identity"), identity, f"checkpoint {path}",
                   hint="use the run directory's own config.toml and base network")
    model, guide = build_model_and_guide(cfg, net, num_data)
    model.run_identity = ckpt.get("identity") or identity
    guide.load_state_dict(ckpt["guide"])
    model.net.load_state_dict(ckpt["net"])
    return model, guide.to(device)


@torch.no_grad()
def evaluate_posterior(cfg, model, guide, test, device):
    """Greedy-MAP and Bayesian-averaging test accuracy, and the sparsity of the export."""
    greedy = greedy_map(model, guide)
    greedy_acc = evaluate_accuracy(greedy, test, device=device)
    networks = sample_networks(model, guide, cfg.eval.num_samples, eval_temperature=cfg.eval.eval_temperature,
                               generator=torch.Generator(device=device).manual_seed(cfg.seed))
    x, y = test.tensors
    correct = 0
    model.net.eval()
    for start in range(0, len(y), cfg.data.eval_batch_size):
        xb = x[start : start + cfg.data.eval_batch_size].to(device)
        logits = sum(model.run_net(w, xb) for w in networks) / len(networks)
        correct += int((logits.argmax(-1).cpu() == y[start : start + cfg.data.eval_batch_size]).sum())
    hard = hard_assignment(model, guide)
    nnz = sum(int(t.mask.sum()) for t in hard.values())
    numel = sum(t.mask.numel() for t in hard.values())
    return {"greedy_accuracy": greedy_acc, "bma_accuracy": correct / len(y), "sparsity": 1 - nnz / numel}


def export_run(cfg, model, guide, test, device, greedy_accuracy=None):
    """Write the compressed files (:func:`~sqs_pyro.export.export_checked`: each reloaded and checked bit-exact
    to the greedy weights) and measure the reloaded networks' test accuracy."""
    dtype = torch.float16 if cfg.export.codebook_dtype == "float16" else torch.float32
    compressed, expected = compressed_weights(model, guide, codebook_dtype=dtype)
    meta = {"arch": cfg.model.arch, "dataset": cfg.data.dataset, "method": "sqs", "codebook_dtype": cfg.export.codebook_dtype,
            "run_identity": getattr(model, "run_identity", None)}
    files = export_checked(os.path.join(cfg.out_dir, EXPORT_NAME), expected, compressed, metadata=meta,
                           codebook_dtype=cfg.export.codebook_dtype, entropy_coded=cfg.export.entropy_coded)
    out = {"files": {}}
    for kind, f in files.items():
        acc = evaluate_accuracy(f.reloaded.to(device), test, device=device)
        out["files"][kind] = {"path": f.path, "bytes": f.bytes, "reloaded_accuracy": acc, "report": f.report.to_dict()}
    out["greedy_accuracy_rounded_codebook"] = evaluate_accuracy(expected, test, device=device)
    return out


def check_resume(cfg):
    """Before anything is written: ``--resume`` needs this run's checkpoint, written with the same config
    (:class:`~sqs_pyro.errors.RunMismatchError` naming the keys that differ otherwise)."""
    path = os.path.join(cfg.out_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: start the run without --resume")
    check_identity(checkpoint_info(path, "identity"), run_identity(cfg), f"checkpoint {path}",
                   hint="resume with the config it was written with (its config.toml), or start without --resume")
