"""
The compress verb: fit the SQS posterior of a network under a prior spec and
a likelihood, on data, with a :class:`~sqs_pyro.run.config.CompressConfig`.

:func:`fit_sqs` builds the Pyro model (:class:`~sqs_pyro.models.SQSModel`), the
guide (:class:`~sqs_pyro.guides.SQSGuide`) and runs
:class:`~sqs_pyro.run.trainer.SQSTrainer` (checkpointed in ``out_dir``,
resumable). The run's compress stage (:func:`sqs_pyro.run.pipeline.compress`),
the baselines' SQS row and the transformers examples all fit through it; the
export is :func:`sqs_pyro.guides.compressed_weights` then
:func:`sqs_pyro.export.export_checked`.

Example::

    >>> import tempfile, torch
    >>> from sqs_pyro.models import Categorical
    >>> from sqs_pyro.run.config import CompressConfig
    >>> from sqs_pyro.run.trainer import TensorData
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> data = TensorData(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> fit = fit_sqs(net, {"_default": {"num_components": 4}}, Categorical(), data,
    ...               CompressConfig(epochs=1.0, sparsity=0.5), out_dir=tempfile.mkdtemp(), batch_size=16,
    ...               progress=False)
    >>> fit.state.step, sorted(fit.model.sites)
    (4, ['0.weight', '2.weight'])
"""

import dataclasses
import time

from ..guides import SQSGuide
from ..models import SQSModel
from .trainer import SQSTrainer

__all__ = ["Fit", "fit_model", "fit_sqs"]


@dataclasses.dataclass
class Fit:
    """What :func:`fit_sqs` returns."""

    model: SQSModel
    guide: SQSGuide
    trainer: SQSTrainer
    state: object  #: the trainer's final :class:`~sqs_pyro.run.trainer.TrainState`
    init_seconds: float  #: building the guide (k-means initialisation of the codebooks)
    train_seconds: float  #: the SVI run


def fit_sqs(net, spec, likelihood, data, config, *, out_dir, batch_size, seed=0, num_data=None, forward=None,
            device=None, to_device=None, progress=True, resume=False, identity=None, stop=None):
    """
    Fit the SQS posterior of ``net`` (it becomes the model's network: pass a copy
    to keep the original).

    :param spec: a :class:`~sqs_pyro.PriorSpec` (or a dict, or a spec file).
    :param likelihood: from :mod:`sqs_pyro.models.likelihoods`.
    :param data: what :class:`~sqs_pyro.run.trainer.SQSTrainer` reads
        (:class:`~sqs_pyro.run.trainer.TensorData`, the tokenized data sets).
    :param config: a :class:`~sqs_pyro.run.config.CompressConfig`.
    :param int num_data: the data plate's size (default ``len(data)``).
    :param forward: ``forward(net, x)`` for networks not called as ``net(x)``.
    :param device: where the guide lives (default: where it is built).
    :param identity: the run identity, written with every checkpoint.
    :param stop: early stopping, ``stop(trainer) -> bool`` after every step
        (:meth:`~sqs_pyro.run.trainer.SQSTrainer.run`).
    :returns: a :class:`Fit`.
    """
    model = SQSModel(net, spec, likelihood, num_data=len(data) if num_data is None else num_data, forward=forward)
    return fit_model(model, data, config, out_dir=out_dir, batch_size=batch_size, seed=seed, device=device,
                     to_device=to_device, progress=progress, resume=resume, identity=identity, stop=stop)


def fit_model(model, data, config, *, out_dir, batch_size, seed=0, guide=None, sensitivity=None, device=None,
              to_device=None, progress=True, resume=False, identity=None, data_parallel=None, stop=None):
    """
    Fit the SQS guide of an already built Pyro model: :func:`fit_sqs` after its
    :class:`~sqs_pyro.models.SQSModel`, and the block-wise fits
    (:func:`sqs_pyro.run.blockwise.compress_block`, whose model is one decoder
    layer against its teacher's outputs).

    :param model: an :class:`~sqs_pyro.models.SQSModel` (or a subclass).
    :param guide: the :class:`~sqs_pyro.guides.SQSGuide` to train, e.g. one started from
        saved state (default: a new one, k-means initialised).
    :param dict sensitivity: optional per-site weights of the codebooks' k-means
        (:class:`~sqs_pyro.guides.SQSGuide`'s ``sensitivity``).
    :param data_parallel: passed to :class:`~sqs_pyro.run.trainer.SQSTrainer`
        (``False``: fit in this process alone even under ``torchrun``).
    :param stop: early stopping, as in :func:`fit_sqs` (the consistency simulation's plateau rule).
    :returns: a :class:`Fit`.
    """
    start = time.perf_counter()
    if guide is None:
        guide = SQSGuide(model, sensitivity=sensitivity)
    elif sensitivity is not None:
        raise ValueError("fit_model: pass sensitivity= or guide=, not both (a given guide is already initialised)")
    if device is not None:
        guide.to(device)
    init_seconds = time.perf_counter() - start
    trainer = SQSTrainer(model, guide, data, config, out_dir=out_dir, batch_size=batch_size, seed=seed,
                         to_device=to_device, progress=progress, data_parallel=data_parallel)
    if identity is not None:
        trainer.identity = model.run_identity = identity
    start = time.perf_counter()
    state = trainer.run(resume=resume, stop=stop)
    return Fit(model, guide, trainer, state, init_seconds, time.perf_counter() - start)
