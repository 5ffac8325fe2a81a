"""
The settings of the consistency simulation (:mod:`sqs_pyro.analysis.consistency`):
:class:`ConsistencyConfig` and the :data:`ABLATIONS`. A module of its own, so
that the simulation and its summary (:mod:`sqs_pyro.analysis.consistency_result`)
both read it without importing each other.

Example::

    >>> cfg = ConsistencyConfig.smoke(seeds=(0,))
    >>> cfg.sizes, cfg.steps_cap(1000), ConsistencyConfig().steps_cap(4000)
    ((250, 500, 1000), 600, 6000)
    >>> ConsistencyConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

import dataclasses
from dataclasses import dataclass

__all__ = ["ABLATIONS", "ConsistencyConfig"]

#: The ablations at the largest ``n``: name -> the settings that differ from the default fit.
ABLATIONS = {
    "K = 2": {"num_components": 2},
    "lambda0 = 0.9": {"inclusion_prob": 0.9},
    "plug_in = mean": {"plug_in": "mean"},
    "anchors = frozen": {"anchors": "frozen"},
}


@dataclass(frozen=True)
class ConsistencyConfig:
    """
    Settings of the simulation; every field has a default (about 5 minutes on
    two idle cores), :meth:`smoke` gives a version of about half a minute and
    :meth:`full` the longer study.

    :param tuple seeds: replicate seeds; each draws its own teacher, data, students and SVI noise.
    :param tuple sizes: the grid of training-set sizes ``n``.
    :param tuple teacher_widths: hidden widths of the teacher.
    :param tuple teacher_levels: the teacher's 4-level codebook.
    :param float noise_std: ``sigma`` of the Gaussian noise (the student's
        likelihood uses the true value).
    :param int student_width: hidden width of both student layers.
    :param int num_components: ``K`` of every student layer.
    :param float inclusion_prob: the prior's ``lambda_0``.
    :param str plug_in: the ELBO's data term, ``"sample"`` (a Monte Carlo ELBO)
        or ``"mean"`` (the paper's posterior-mean surrogate).
    :param str anchors: ``"straight-through"`` or ``"frozen"`` (module docstring).
    :param float lr: learning rate of the codebooks, scales, mixing weights and biases.
    :param float gate_lr: learning rate of the gate logits ``rho``.
    :param float anchor_lr: learning rate of straight-through anchors.
    :param int max_steps: the step cap of a fit for ``n <= steps_reference_n``;
        larger ``n`` get ``max_steps * (n / steps_reference_n) ** steps_growth``.
    :param int check_every: SVI steps between two evaluations of the full-data ELBO.
    :param float elbo_tol: an improvement of less than this many nats of the total ELBO per 1000
        examples (``elbo_tol * n / 1000`` nats) is none.
    :param int patience: checks per window: the mean ELBO of the last ``patience`` checks is
        compared with that of the ``patience`` before (both at the current learning rates).
    :param float lr_decay: the factor of each decay.
    :param int max_decays: decays before a plateau means convergence.
    :param int monitor_particles: fixed draws of the ELBO evaluations.
    :param int posterior_draws: networks drawn from ``q`` for the ``E_q`` columns.
    :param tuple ablations: names of :data:`ABLATIONS` fitted at the largest ``n``.
    :param int ablation_seeds: how many of ``seeds`` (the first ones) the ablations use.
    :param int workers: processes (one torch thread each); 1 runs in this process.
    """

    seeds: tuple = (0, 1, 2, 3)
    sizes: tuple = (500, 1000, 2000, 4000, 8000, 16000)
    num_inputs: int = 10
    num_relevant: int = 4
    teacher_widths: tuple = (8, 8)
    teacher_levels: tuple = (-1.0, -0.5, 0.5, 1.0)
    noise_std: float = 0.5
    student_width: int = 16
    num_components: int = 4
    inclusion_prob: float = 0.01
    slab_scale: float = 3.0
    tau: float = 1e-3
    plug_in: str = "sample"
    anchors: str = "straight-through"
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 512
    pretrain_lr: float = 1e-2
    batch_size: int = 1024
    lr: float = 3e-3
    gate_lr: float = 1e-3
    anchor_lr: float = 1e-3
    max_steps: int = 3000
    steps_growth: float = 0.5
    steps_reference_n: int = 1000
    check_every: int = 50
    elbo_tol: float = 0.5
    patience: int = 4
    lr_decay: float = 0.3
    max_decays: int = 2
    monitor_particles: int = 4
    num_test: int = 20000
    posterior_draws: int = 16
    ablations: tuple = tuple(ABLATIONS)
    ablation_seeds: int = 1
    workers: int = 2

    def __post_init__(self):
        for name in ("seeds", "sizes", "teacher_widths", "teacher_levels", "ablations"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.plug_in not in ("sample", "mean"):
            raise ValueError(f"plug_in must be 'sample' or 'mean', got {self.plug_in!r}")
        if self.anchors not in ("straight-through", "frozen"):
            raise ValueError(f"anchors must be 'straight-through' or 'frozen', got {self.anchors!r}")
        if not self.sizes or min(self.sizes) < 2:
            raise ValueError(f"sizes must be a non-empty tuple of sample sizes >= 2, got {self.sizes!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of distinct integers, got {self.seeds!r}")
        if not 0 < self.num_relevant <= self.num_inputs:
            raise ValueError(f"num_relevant must be in [1, num_inputs], got {self.num_relevant}")
        if len(self.teacher_widths) != 2:
            raise ValueError(f"the teacher has two hidden layers, got widths {self.teacher_widths!r}")
        unknown = set(self.ablations) - set(ABLATIONS)
        if unknown:
            raise ValueError(f"unknown ablations {sorted(unknown)}: choose from {list(ABLATIONS)}")

    @classmethod
    def smoke(cls, **overrides):
        """A small version (about half a minute on two cores): two seeds, fewer and smaller ``n``."""
        base = dict(seeds=(0, 1), sizes=(250, 500, 1000), pretrain_steps=300, max_steps=600, steps_growth=0.0,
                    batch_size=512, num_test=4000, posterior_draws=4, ablations=("K = 2",), ablation_seeds=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def full(cls, **overrides):
        """The longer study: n up to 64000, eight seeds, every ablation on four of them."""
        base = dict(seeds=tuple(range(8)), sizes=(500, 1000, 2000, 4000, 8000, 16000, 32000, 64000),
                    ablation_seeds=4)
        base.update(overrides)
        return cls(**base)

    def steps_cap(self, n):
        """The most SVI steps a fit on ``n`` examples may take."""
        return int(round(self.max_steps * max(1.0, n / self.steps_reference_n) ** self.steps_growth))

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})
