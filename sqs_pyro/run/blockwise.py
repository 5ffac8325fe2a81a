"""
Block-wise compression of a transformer: every decoder layer compressed in
turn on its block-wise likelihood (:mod:`sqs_pyro.models.blockwise`), each with
its own SVI run and checkpoints, the results gathered into one compressed file.

Blocks are independent given the teacher's inputs, so under ``torchrun`` each
process takes a contiguous slice of the blocks (:func:`assign_blocks`), trains
them alone (no DDP: ``fit_model(data_parallel=False)``) and process 0 gathers
the finished blocks (their files' bytes, sent over the process group: no
shared file system needed) into the file. Each block is seeded by ``(seed, block)``
and its teacher data computed the same way whatever the process count, so 1
and N processes write the same file.

Resume: a finished block leaves ``block_NNN.sqs.safetensors`` (its compressed
tensors) in ``out_dir``; an unfinished one resumes from its SVI checkpoint in
``block_NNN/``. ``resume=False`` starts every block over.

Example::

    >>> import tempfile, torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from sqs_pyro.run.config import CompressConfig
    >>> from sqs_pyro.data.tokenized import TokenWindows
    >>> from sqs_pyro.models.transformers import default_prior_spec
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=2, num_key_value_heads=1)
    >>> net = LlamaForCausalLM(cfg).eval()
    >>> calib = TokenWindows(torch.randint(0, 64, (4, 8)))
    >>> compressed = compress_blocks(net, calib, default_prior_spec(net, num_components=4),
    ...                              CompressConfig(epochs=1, pruning="none"), out_dir=tempfile.mkdtemp(), batch_size=2)
    >>> len(compressed)                 # 6 matrices in each of 2 layers
    12
"""

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings

import pyro
import torch
import torch.distributed as dist

from sqs_pyro.export import apply_compressed as apply_compressed_
from sqs_pyro.export import load, save
from sqs_pyro.guides import SQSGuide, compressed_weights, hard_assignment
from sqs_pyro.guides.input_norms import input_norms, wanda_scores
from sqs_pyro.io import atomic_write
from sqs_pyro.models import CausalLM, SQSModel
from sqs_pyro.models.blockwise import block_model, capture_block_data, decoder_layers
from sqs_pyro.models.transformers import causal_lm_forward
from sqs_pyro.prior_spec import PriorSpec

from .checkpoint import load_checkpoint
from .files import CHECKPOINT_NAME
from .fit import fit_model

__all__ = ["apply_compressed", "assign_blocks", "block_file", "compress_block", "compress_blocks", "spec_blocks",
           "whole_model_pass"]


def assign_blocks(num_blocks, rank, world):
    """The contiguous slice of ``range(num_blocks)`` that process ``rank`` of ``world`` compresses (sizes differ by ≤ 1)."""
    base, extra = divmod(num_blocks, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def block_file(out_dir, index):
    """The compressed tensors of finished block ``index``."""
    return os.path.join(out_dir, f"block_{index:03d}.sqs.safetensors")


def _block_dir(out_dir, index):
    return os.path.join(out_dir, f"block_{index:03d}")


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def input_sensitivity(model, data, batch_size, batches=8):
    """
    Per-weight sensitivity of a block's linear weights for the block-wise
    likelihood: the diagonal of the squared error's Hessian, ``H_ij = sum_x x_j^2``
    (``||X_j||_2^2`` of the layer's input feature ``j``, the quantity GPTQ's and
    SqueezeLLM's objectives weight by), from the first ``batches`` minibatches of
    the block's teacher ``data`` run through the block at its pretrained weights.

    :returns: ``{site name: tensor of the weight's shape}`` for ``SQSGuide(sensitivity=...)``.
    """
    anchors = {name: site.anchor.detach() for name, site in model.sites.items()}
    stop = min(len(data), batches * batch_size)
    gen = (data.get(torch.arange(i, min(i + batch_size, stop)))[0] for i in range(0, stop, batch_size))
    with torch.no_grad():
        norms = input_norms(model.net, gen, list(model.sites), forward=lambda net, x: model.run_net(anchors, x))
    return {n: wanda_scores(torch.ones_like(site.anchor), norms[n]).square() for n, site in model.sites.items()}


def compress_block(net, index, prior_spec, data, cfg, *, out_dir, batch_size, seed=0, scale=None, progress=False,
                   resume=False, codebook_dtype="float16", init="kmeans"):
    """
    Fit the block-wise SQS model of decoder layer ``index`` on its teacher
    ``data`` (:class:`~sqs_pyro.models.blockwise.BlockData`) with
    :func:`~sqs_pyro.run.fit.fit_model` (checkpoints in ``out_dir/block_NNN``)
    and write its greedy MAP weights to :func:`block_file`.

    :param str init: ``"kmeans"`` (the sites' own init) or ``"input"``: codebooks
        from k-means weighted by :func:`input_sensitivity`.

    :returns: a dict of facts about the fit (steps, seconds, scale, relative error of the first and last
        logged steps (:func:`_relative_error`, on that step's minibatch), first and last log rows).
    """
    run_dir = _block_dir(out_dir, index)
    block_seed = seed * 1_000_003 + index
    start = time.perf_counter()
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(block_seed)
        model = block_model(net, index, prior_spec, data, scale=scale)
        sensitivity = input_sensitivity(model, data, batch_size) if init == "input" else None
        fit = fit_model(model, data, cfg, out_dir=run_dir, batch_size=batch_size, seed=block_seed,
                        sensitivity=sensitivity, progress=progress, data_parallel=False,
                        resume=resume and os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)))
        guide, state = fit.guide, fit.state
        compressed = {
            name: dataclasses.replace(ct, num_components=model.sites[name].settings.guide.num_components)
            for name, ct in hard_assignment(model, guide, codebook_dtype=getattr(torch, codebook_dtype)).items()
        }
    scale = model.likelihood.scale
    rel = {f"relative_error_{k}": _relative_error(row, scale, data.targets.numel())
           for k, row in (("first", state.history[0] if state.history else None),
                          ("last", state.history[-1] if state.history else None)) if row is not None}
    save(block_file(out_dir, index), compressed, {}, codebook_dtype=codebook_dtype,
         metadata={"block": index, "scale": scale, "steps": state.step})
    return {"block": index, "steps": state.step, "seconds": time.perf_counter() - start, "scale": scale,
            "sites": len(compressed), **rel, "first_log": state.history[0] if state.history else None,
            "last_log": state.history[-1] if state.history else None}


def _relative_error(row, scale, numel):
    """
    The student's squared error on the teacher's outputs relative to ``scale^2``, from a log row's data term
    (the Gaussian log-likelihood of every output value, at the posterior mean): with the default scale, the
    fraction of the teacher layer's update ``h_{l+1} - h_l`` (its mean square) the block does not reproduce.
    """
    return -2 * (row["data"] + numel * (math.log(scale) + 0.5 * math.log(2 * math.pi))) / numel


def spec_blocks(net, prior_spec):
    """The decoder layers of ``net`` in which ``prior_spec`` compresses a weight (warns about weights outside them)."""
    prefix, _ = decoder_layers(net)
    blocks, outside = set(), []
    for name in PriorSpec.coerce(prior_spec).resolve(net):
        if name.startswith(prefix + "."):
            blocks.add(int(name[len(prefix) + 1 :].split(".")[0]))
        else:
            outside.append(name)
    if outside:
        warnings.warn(f"the prior spec compresses {len(outside)} weights outside the decoder layers ({outside[:3]}): "
                      "block-wise compression leaves them dense; a whole-model pass compresses them")
    return sorted(blocks)


def _fingerprint(calib):
    """The calibration windows' count and, for token windows, the sha256 of their tokens."""
    tokens = getattr(calib, "tokens", None)
    if not torch.is_tensor(tokens):
        return {"windows": len(calib)}
    return {"windows": len(calib), "shape": list(tokens.shape),
            "sha256": hashlib.sha256(tokens.contiguous().cpu().numpy().tobytes()).hexdigest()}


def _check_settings(out_dir, settings, resume, rank):
    path = os.path.join(out_dir, "blockwise_settings.json")
    settings = json.loads(json.dumps(settings, default=str))
    if resume and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(f"{out_dir} holds blocks compressed with other settings ({', '.join(changed)} differ): "
                             "resume with the same options, or use another output folder")
    if rank == 0:
        with atomic_write(path, "w") as f:
            f.write(json.dumps(settings, indent=2) + "\n")


def compress_blocks(net, calib, prior_spec, cfg, *, out_dir, batch_size, seed=0, blocks=None, scale=None,
                    capture_batch_size=4, capture_blocks=8, store_dtype=None, progress=False, resume=False,
                    codebook_dtype="float16", init="kmeans", log=None):
    """
    Compress the decoder layers of ``net`` one by one, each on its block-wise
    likelihood, spread over the processes of an initialized ``torch.distributed``
    group (if any).

    The network's own parameters are frozen (``requires_grad_(False)``): only the
    compressed weights' posteriors are fitted, and every other tensor of the
    exported model is the teacher's.

    :param calib: calibration windows (``get(idx) -> (x, y)``, e.g. :class:`~sqs_pyro.data.tokenized.TokenWindows`).
    :param prior_spec: the whole model's prior spec (resolved on each block at its place).
    :param cfg: a :class:`~sqs_pyro.run.config.CompressConfig`; ``epochs`` over the calibration windows, per block.
    :param blocks: the decoder layers to compress (default: every layer the spec compresses a weight of;
        weights the spec compresses outside the decoder layers are left dense, with a warning, unless a
        :func:`whole_model_pass` follows).
    :param float scale: the likelihood's scale (default: each block's update RMS, see
        :mod:`sqs_pyro.models.blockwise`).
    :param int capture_blocks: blocks whose teacher data one pass of the teacher
        captures (memory: 2 × this × windows × tokens × hidden size values).
    :param str init: the codebooks' start, see :func:`compress_block`.
    :param callable log: ``log(dict)`` after every block (e.g. ``print``).
    :returns: on process 0, ``name -> CompressedTensor`` of every block's weights; ``None`` elsewhere.
    """
    rank, world = _world()
    blocks = spec_blocks(net, prior_spec) if blocks is None else sorted(int(b) for b in blocks)
    os.makedirs(out_dir, exist_ok=True)
    _check_settings(out_dir, {"blocks": blocks, "cfg": dataclasses.asdict(cfg), "prior_spec": prior_spec,
                              "batch_size": batch_size, "seed": seed, "scale": scale, "calibration": _fingerprint(calib),
                              "codebook_dtype": codebook_dtype, "init": init,
                              "store_dtype": str(store_dtype)}, resume, rank)
    if world > 1:
        dist.barrier()
    net.requires_grad_(False)
    mine = [blocks[i] for i in assign_blocks(len(blocks), rank, world)]
    todo = [i for i in mine if not (resume and os.path.exists(block_file(out_dir, i)))]
    for start in range(0, len(todo), max(1, capture_blocks)):
        chunk = todo[start : start + max(1, capture_blocks)]
        data = capture_block_data(net, calib, chunk, batch_size=capture_batch_size, store_dtype=store_dtype)
        for index in chunk:
            info = compress_block(net, index, prior_spec, data.pop(index), cfg, out_dir=out_dir,
                                  batch_size=batch_size, seed=seed, scale=scale, progress=progress, resume=resume,
                                  codebook_dtype=codebook_dtype, init=init)
            info["rank"] = rank
            if log is not None:
                log(info)
    if world > 1:
        _gather_files(out_dir, blocks, rank, world)
    if rank != 0:
        return None
    compressed = {}
    for index in blocks:
        compressed.update(load(block_file(out_dir, index))[0])
    return compressed


def _gather_files(out_dir, blocks, rank, world):
    """
    Process 0 receives the bytes of every other process's block files (point to point, as uint8 tensors: no
    pickle) and writes those it lacks or holds different. Which blocks a process holds is
    :func:`assign_blocks`'s, known to all.
    """
    if rank == 0:
        for src in range(1, world):
            for index in (blocks[i] for i in assign_blocks(len(blocks), src, world)):
                size = torch.zeros((), dtype=torch.int64)
                dist.recv(size, src=src)
                data = torch.empty(int(size), dtype=torch.uint8)
                dist.recv(data, src=src)
                data, path = data.numpy().tobytes(), block_file(out_dir, index)
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        if f.read() == data:
                            continue
                with atomic_write(path, "wb") as f:
                    f.write(data)
    else:
        for index in (blocks[i] for i in assign_blocks(len(blocks), rank, world)):
            with open(block_file(out_dir, index), "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
            dist.send(torch.tensor(data.numel(), dtype=torch.int64), dst=0)
            dist.send(data, dst=0)
    dist.barrier()


@torch.no_grad()
def apply_compressed(net, compressed):
    """A copy of ``net`` whose compressed weights are the dense form of ``compressed``
    (:func:`sqs_pyro.export.apply_compressed` on a copy)."""
    return apply_compressed_(copy.deepcopy(net), compressed)


def whole_model_pass(net, train, prior_spec, cfg, *, out_dir, block_dir, batch_size, seed=0, progress=False,
                     resume=False, codebook_dtype="float16"):
    """
    A short whole-model pass after the blocks: the whole model's SQS model with the
    causal-LM likelihood on ``train``, its guide (and anchors, which move under
    ``anchors="straight-through"``) started from the blocks' fits (their
    checkpoints in ``block_dir``: under ``torchrun`` that folder must be shared;
    sites outside the blocks start from k-means), trained by
    :func:`~sqs_pyro.run.fit.fit_model` in ``out_dir``.

    :returns: ``(compressed, greedy_net)`` as :func:`~sqs_pyro.guides.compressed_weights`.
    """
    net = copy.deepcopy(net).requires_grad_(False)
    state, anchors = {}, {}
    for index in range(len(decoder_layers(net)[1])):
        path = os.path.join(_block_dir(block_dir, index), CHECKPOINT_NAME)
        if os.path.exists(path):
            ckpt = load_checkpoint(path)
            state.update(ckpt["guide"])
            anchors.update(ckpt["net"])
    with torch.no_grad():
        for name, value in anchors.items():
            net.get_parameter(name).copy_(value)
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        model = SQSModel(net, prior_spec, CausalLM(), num_data=len(train), forward=causal_lm_forward)
        guide = SQSGuide(model)
        missing, unexpected = guide.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"block checkpoints hold guide entries the whole model lacks: {unexpected[:5]}")
        fit_model(model, train, cfg, guide=guide, out_dir=out_dir, batch_size=batch_size, seed=seed,
                  progress=progress, resume=resume and os.path.exists(os.path.join(out_dir, CHECKPOINT_NAME)))
        return compressed_weights(model, guide, codebook_dtype=codebook_dtype)
