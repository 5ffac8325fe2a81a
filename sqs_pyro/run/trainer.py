"""
The SVI loop of a compression run: minibatches, the pruning schedule,
progress bars, a per-step log, atomic checkpoints, resume, NaN guard, and
data-parallel training with PyTorch DDP.

The batch of every step is a pure function of ``(seed, step)``, so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would,
and reaches the same result.

Example::

    >>> import torch, tempfile
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> from sqs_pyro.run.config import CompressConfig
    >>> x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    >>> net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=64)
    >>> trainer = SQSTrainer(model, SQSGuide(model), TensorData(x, y), CompressConfig(epochs=1),
    ...                      out_dir=tempfile.mkdtemp(), batch_size=16, progress=False)
    >>> trainer.run().step
    4
"""

import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..elbo import SQSELBO
from ..guides.input_norms import input_norms, wanda_scores
from ..io import atomic_write
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .identity import check_identity
from .schedules import cubic_sparsity, global_topk_masks


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or infinite; no checkpoint is written from that state (the
    message says which checkpoint, if any, is kept)."""

    exit_code = 6


def _nonfinite_message(exc):
    """True for the distribution-validation errors that a NaN or infinite parameter (or an overflow of its
    transform, e.g. ``exp`` of a huge scale) causes: "... but found invalid values: tensor([inf, ...])"."""
    import re

    text = str(exc).lower()
    return "invalid values" in text and re.search(r"\b(nan|inf)\b", text) is not None


def _tensors_in(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v)


def _params_finite(params):
    """Whether every floating-point tensor of ``params`` is finite: one pass (the max-norm of each, NaN or
    infinite exactly when the tensor has a NaN or an infinity), no per-element flags."""
    params = [p.detach() for p in params if p.is_floating_point() and p.numel()]
    if not params:
        return True
    return bool(torch.stack(torch._foreach_norm(params, float("inf"))).isfinite().all())


def _all_finite(tensors):
    flags = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class TensorData:
    """Indexable training data: ``get(idx) -> (x, y)`` for a long tensor of indices."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def get(self, idx):
        return self.x[idx], self.y[idx]


def _epoch_generator(seed, epoch):
    """The random generator of epoch ``epoch``: seeded by ``(seed, epoch)`` alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_permutation(seed, epoch, n):
    """The shuffling of epoch ``epoch``: a pure function of ``(seed, epoch)``."""
    return torch.randperm(n, generator=_epoch_generator(seed, epoch))


def epoch_order(data, seed, epoch, batch_size):
    """
    The order of epoch ``epoch`` over ``data``: ``data.epoch_order(batch_size,
    generator)`` when the data defines it (e.g. length-grouped batches of
    texts), else :func:`epoch_permutation`. Either way a pure function of
    ``(seed, epoch)``.
    """
    order = getattr(data, "epoch_order", None)
    if order is None:
        return epoch_permutation(seed, epoch, len(data))
    return order(batch_size, _epoch_generator(seed, epoch))


@dataclass
class TrainState:
    step: int = 0
    history: list = field(default_factory=list)


class _ELBOModule(torch.nn.Module):
    """Model + guide as one module whose forward is the loss, so DDP can wrap it."""

    def __init__(self, model, guide, elbo):
        super().__init__()
        self.model, self.guide, self.elbo = model, guide, elbo

    def forward(self, x, y, subsample):
        return self.elbo.differentiable_loss(self.model, self.guide, x, y, subsample=subsample)


class SQSTrainer:
    """
    Runs SVI with the SQS ELBO on a model and guide.

    :param model: an :class:`~sqs_pyro.models.SQSModel`.
    :param guide: an :class:`~sqs_pyro.guides.SQSGuide`.
    :param data: training data with ``len`` and ``get(idx) -> (x, y)``.
    :param cfg: a :class:`~sqs_pyro.run.config.CompressConfig`.
    :param str out_dir: run directory (``checkpoint.pt``, ``log.jsonl``).
    :param int batch_size: global batch size (split over DDP processes).
    :param callable to_device: moves a batch ``(x, y)`` to the device.
    :param bool data_parallel: split each batch over the processes of an initialized
        ``torch.distributed`` group (DDP). ``None`` (default): whenever a group is
        initialized; ``False``: this process trains alone even under ``torchrun``
        (what :mod:`sqs_pyro.models.blockwise` does, one block per process).
    :param dict input_norms: for ``score="wanda"``: ``name -> ||X_j||_2`` of
        each site's input features over calibration data
        (:func:`~sqs_pyro.guides.input_norms`). Default: computed on the first
        :attr:`calibration_batches` batches of the run's epoch-0 order, with the
        pretrained weights (a pure function of data and seed). Saved with every
        checkpoint and restored on resume.
    """

    #: batches of the training data that ``score="wanda"`` collects input norms on when none are given
    calibration_batches = 8

    def __init__(self, model, guide, data, cfg, *, out_dir, batch_size, seed=0, to_device=None,
                 progress=True, checkpoint_name="checkpoint.pt", log_name="log.jsonl", data_parallel=None,
                 input_norms=None):
        cfg = cfg.resolved()  # the recipe's choices filled in (sqs_pyro.run.recipes)
        self.model, self.guide, self.data, self.cfg = model, guide, data, cfg
        straight_through = cfg.anchors == "straight-through"
        guide.configure(gates=cfg.gates, straight_through=straight_through)
        self.anchors = [site.anchor for site in model.sites.values()] if straight_through else []
        for anchor in self.anchors:
            anchor.requires_grad_(True)
        # rho is trained only by learned gates with a learning rate: hard gates, or a gate_lr of 0 (Adam would
        # leave rho as it is), need neither its gradient nor Adam's states (16 bytes a weight; nor seen by DDP)
        self.gates_trained = cfg.gates == "learned" and cfg.gate_lr > 0
        for name, param in guide.named_parameters():
            if name.endswith("rho_unconstrained") or name.endswith(".rho"):
                param.requires_grad_(self.gates_trained)
        self._order = (None, None)  # (epoch, its order), computed once per epoch
        self.out_dir = out_dir
        self.batch_size = int(batch_size)
        self.seed = seed
        self.to_device = to_device or (lambda batch: batch)
        self.progress = progress
        self.checkpoint_path = os.path.join(out_dir, checkpoint_name)
        self.log_path = os.path.join(out_dir, log_name)
        self.elbo = SQSELBO(plug_in=cfg.plug_in, kl_weight=cfg.kl_weight)
        self.distributed = dist.is_available() and dist.is_initialized() and data_parallel is not False
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if self.batch_size % self.world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {self.world} processes")
        self.steps_per_epoch = max(1, len(data) // self.batch_size)
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.optimizer = self._make_optimizer()
        self.state = TrainState()
        module = _ELBOModule(model, guide, self.elbo)
        if self.distributed:
            module = torch.nn.parallel.DistributedDataParallel(module)
        self.loss_module = module
        self.input_norms = None
        if cfg.score == "wanda":
            self.input_norms = dict(input_norms) if input_norms is not None else self.calibration_input_norms()
            missing = [n for n in model.sites if n not in self.input_norms]
            if missing:
                raise ValueError(f"score='wanda' needs the input norms of every compressed site; missing {missing}")

    @torch.no_grad()
    def calibration_input_norms(self):
        """
        Wanda's ``||X_j||_2`` of every site over the first :attr:`calibration_batches`
        batches of epoch 0 (this process's share of each), evaluated with the
        pretrained weights (the anchors); summed over processes under DDP.
        """
        anchors = {name: site.anchor.detach() for name, site in self.model.sites.items()}
        steps = min(self.calibration_batches, self.steps_per_epoch)
        batches = (self.to_device(self.data.get(self.batch_indices(t)))[0] for t in range(steps))
        was_training = self.model.net.training
        self.model.net.eval()
        try:
            norms = input_norms(self.model.net, batches, list(self.model.sites),
                                forward=lambda net, x: self.model.run_net(anchors, x))
        finally:
            self.model.net.train(was_training)
        if self.distributed:
            for v in norms.values():
                sq = v.square()
                dist.all_reduce(sq)
                v.copy_(sq.sqrt())
        return norms

    def _make_optimizer(self):
        gates, others = [], []
        for name, p in self.guide.named_parameters():
            (gates if name.endswith("rho_unconstrained") or name.endswith(".rho") else others).append(p)
        anchors = {id(a) for a in self.anchors}
        others += [p for _, p in self.model.point_parameters() if id(p) not in anchors]
        groups = [{"params": others, "lr": self.cfg.lr}]
        if gates and self.gates_trained:
            groups.append({"params": gates, "lr": self.cfg.gate_lr})
        if self.anchors:
            groups.append({"params": self.anchors, "lr": self.cfg.anchor_lr})
        for group in groups:
            group["base_lr"] = group["lr"]
        return torch.optim.Adam(groups)

    def lr_factor(self, step):
        """The learning-rate multiplier at ``step``: 1, or a cosine decay to 0 over the run."""
        if self.cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))

    # batches -------------------------------------------------------------------------------------
    def batch_indices(self, step):
        """This process's indices of step ``step``."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.data, self.seed, epoch, self.batch_size))
        perm = self._order[1]
        idx = perm[j * self.batch_size : (j + 1) * self.batch_size]
        return idx[self.rank :: self.world]

    # pruning -------------------------------------------------------------------------------------
    def target_sparsity(self, step):
        cfg = self.cfg
        if cfg.pruning != "cubic":
            return 0.0
        t0, t1 = cfg.prune_start * self.total_steps, cfg.prune_end * self.total_steps
        return cubic_sparsity(step, 0.0, cfg.sparsity, t0, t1)

    @torch.no_grad()
    def scores(self):
        out = {}
        for name, site in self.model.sites.items():
            p = self.guide.params_of(name)
            if self.cfg.score == "rho":
                s = p.rho.detach().clone()
            elif self.cfg.score == "anchor":
                s = site.anchor.detach().abs()
            elif self.cfg.score == "wanda":  # |W_ij| ||X_j||_2 (Sun et al. 2023)

                s = wanda_scores(site.anchor, self.input_norms[name].to(site.anchor.device))
            else:
                s = self.guide.posterior(name).mean.abs()
            out[name] = s.masked_fill(~p.mask, float("-inf"))
        return out

    @torch.no_grad()
    def prune(self, step):
        target = self.target_sparsity(step)
        if target <= 0:
            return
        current = self.mask_sparsity()
        if target > current:
            self.guide.set_masks(global_topk_masks(self.scores(), target))
            if self.cfg.refit_codebooks and self._refit_due(step):
                self.guide.refit_codebooks()

    def _refit_due(self, step):
        # Refit when the target crosses a whole percent, and at the final mask: a
        # pure function of the step, so a resumed run refits where an uninterrupted one does.
        now, before = self.target_sparsity(step), self.target_sparsity(step - 1) if step > 0 else 0.0
        return int(100 * now) > int(100 * before) or (now >= self.cfg.sparsity > before)

    @torch.no_grad()
    def mask_sparsity(self):
        masks = self.guide.masks()
        total = sum(m.numel() for m in masks.values())
        return 1.0 - sum(int(m.sum()) for m in masks.values()) / total

    @torch.no_grad()
    def posterior_sparsity(self):
        pruned = total = 0
        for name in self.model.sites:
            gate = self.guide.params_of(name).gate_probs()
            pruned += int((gate < 0.5).sum())
            total += gate.numel()
        return pruned / total

    # checkpoints ---------------------------------------------------------------------------------
    def state_dict(self):
        state = {
            "step": self.state.step,
            "guide": self.guide.state_dict(),
            "net": self.model.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
        }
        if self.input_norms is not None:
            state["input_norms"] = {n: v.detach().cpu() for n, v in self.input_norms.items()}
        return state

    #: the run's identity (:func:`sqs_pyro.run.identity.run_identity`), stored with every checkpoint and
    #: checked on resume; ``None``: not checked
    identity = None
    _saved_step = None  # the step of the last checkpoint this run wrote or resumed from

    def save(self):
        if self.rank == 0:
            state = self.state_dict()
            if not _all_finite(_tensors_in(state)):  # guide, network and optimizer state
                raise NonFiniteLossError(f"non-finite parameters at step {self.state.step}: not saved. "
                                         + self._kept_message())
            if self.identity is not None:
                state["identity"] = self.identity
            save_checkpoint(self.checkpoint_path, state)
            self._saved_step = self.state.step
        if self.distributed:
            dist.barrier()

    def _kept_message(self):
        if self._saved_step is None:
            return ("No checkpoint of this run exists yet (none was written before the failure), so there is "
                    "nothing to resume: lower the learning rate or kl_weight and start again")
        return (f"The last good checkpoint (step {self._saved_step}) is kept at {self.checkpoint_path}: lower the "
                "learning rate or kl_weight and resume with --resume")

    def load(self):
        ckpt = load_checkpoint(self.checkpoint_path)
        if self.identity is not None:
            check_identity(ckpt.get("identity"), self.identity, f"checkpoint {self.checkpoint_path}",
                           hint="resume with the config it was written with, or start without --resume")
        self.guide.load_state_dict(ckpt["guide"])
        self.model.net.load_state_dict(ckpt["net"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if self.input_norms is not None and "input_norms" in ckpt:  # the norms the run started with
            self.input_norms = {n: v.to(self.input_norms[n].device) for n, v in ckpt["input_norms"].items()}
        self.state.step = ckpt["step"]
        self._saved_step = self.state.step
        self.state.history = self._read_log(upto=self.state.step)
        if self.rank == 0:  # drop log lines written after the checkpoint
            with atomic_write(self.log_path, "w") as f:
                for row in self.state.history:
                    f.write(json.dumps(row) + "\n")
        return ckpt

    def _read_log(self, upto):
        if not os.path.exists(self.log_path):
            return []
        rows = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a crash
                if row["step"] <= upto:
                    rows.append(row)
        return rows

    # the loop ------------------------------------------------------------------------------------
    def step(self):
        t = self.state.step
        self.prune(t)
        idx = self.batch_indices(t)
        x, y = self.to_device(self.data.get(idx))
        self.model.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.lr_factor(t)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self.loss_module(x, y, idx.to(y.device if torch.is_tensor(y) else "cpu"))
        except ValueError as e:  # distribution validation rejects NaN / infinite parameters
            if not _nonfinite_message(e):
                raise
            loss = torch.tensor(float("nan"))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at step {t}; stopped. " + self._kept_message())
        loss.backward()
        self.optimizer.step()
        if not _params_finite(p for g in self.optimizer.param_groups for p in g["params"]):
            raise NonFiniteLossError(f"parameters became NaN or infinite in the update of step {t} (loss "
                                     f"{loss.item():.4g}); stopped. " + self._kept_message())
        self.state.step = t + 1
        return loss.detach()

    def run(self, resume=False, stop=None):
        """
        Train to the end (or resume and finish). Returns the :class:`TrainState`.

        :param callable stop: early stopping: ``stop(trainer) -> bool``, asked after
            every step; ``True`` ends the run at that step (logged and checkpointed
            as the last step is). It may also lower the learning rates (each
            group's ``"base_lr"`` in :attr:`optimizer`), as a plateau rule does
            (:mod:`sqs_pyro.analysis.consistency`). Under DDP every process must
            answer the same. A resumed run asks afresh and may go past the stop.
        """
        os.makedirs(self.out_dir, exist_ok=True)
        if resume:
            self.load()
        elif self.rank == 0 and os.path.exists(self.log_path):
            os.remove(self.log_path)
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="SQS", disable=not self.progress or self.rank)
        log = open(self.log_path, "a") if self.rank == 0 else None
        try:
            while self.state.step < self.total_steps:
                loss = self.step()
                t = self.state.step
                stopped = stop is not None and bool(stop(self))  # asked at the last step too
                last = stopped or t == self.total_steps
                if t % self.cfg.log_every == 0 or last:
                    row = self._log_row(loss)
                    self.state.history.append(row)
                    if log:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.set_postfix(loss=f"{row['loss_per_example']:.3f}", data=f"{row['data']:.0f}",
                                    kl=f"{row['kl_total']:.0f}", sparsity=f"{row['sparsity']:.2f}")
                if t % self.cfg.checkpoint_every == 0 or last:
                    self.save()
                bar.update(1)
                if last:
                    break
        finally:
            bar.close()
            if log:
                log.close()
        return self.state

    def _log_row(self, loss):
        terms = self.elbo.last_terms
        n = len(self.data)
        return {
            "step": self.state.step,
            "epoch": self.state.step / self.steps_per_epoch,
            "loss": float(loss),
            "loss_per_example": float(loss) / n,
            "data": terms["data"],
            "kl_total": terms["kl_total"],
            "kl": terms["kl"],
            "sparsity": self.mask_sparsity(),
            "posterior_sparsity": self.posterior_sparsity(),
            "target_sparsity": self.target_sparsity(self.state.step),
        }
