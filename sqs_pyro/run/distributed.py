"""
Data-parallel SVI with PyTorch's DistributedDataParallel.

Under ``torchrun`` every process takes its own shard of each minibatch; each
shard's likelihood is scaled by ``n / b_local`` by the data plate, so each
process's loss is an unbiased estimate of the full negative ELBO and DDP's
gradient averaging gives exactly the single-process gradient of the whole
batch. Process 0 alone writes checkpoints, logs and files.

Example::

    torchrun --nproc-per-node 2 -m sqs_pyro compress --smoke
"""

import os

import torch
import torch.distributed as dist


def init_from_env(device_kind="auto"):
    """
    Initialize the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``):
    gloo on CPU, nccl on GPU. Returns ``(rank, world_size)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        use_cuda = device_kind != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def local_device(device):
    """On CUDA under torchrun, each process uses the GPU of its ``LOCAL_RANK``."""
    if device.type == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
