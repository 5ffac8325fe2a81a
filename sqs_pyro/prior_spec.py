"""
Priors are data: a declarative map from module selectors to prior settings.

A :class:`PriorSpec` says which weights of a network are compressed and with
which spike-and-slab prior and variational family (docs/method.md §2, §3, §5). Each
rule maps a *selector* to a dict of :class:`PriorSettings` fields (the
prior, read by the model) and :class:`GuideSettings` fields (the variational
family, read by the guide), together a :class:`LayerSettings`, or to
``None`` (equivalently the string ``"dense"``) to keep the matched modules
dense. Selectors are

- ``"features.3"``: an exact module name, as in ``net.named_modules()``;
- ``"re:<pattern>"``: a regular expression, full-matched against module names;
- ``"type:Conv2d"``: a module class name (or ``module.QualName``), matched
  along the class's MRO, so ``type:Conv2d`` also matches subclasses;
- ``"_default"``: every compressible module no other rule matches.

Only compressible modules are considered: :class:`~torch.nn.Linear`,
:class:`~torch.nn.Conv1d`, :class:`~torch.nn.Conv2d`, :class:`~torch.nn.Conv3d`
(and subclasses) and ``transformers``' ``Conv1D``; the compressed tensor is the
module's ``weight``. A module takes the first rule that matches in the order
exact name > regex (first in insertion order) > type (most specific class in
the MRO, then insertion order) > ``_default``, and stays dense if none does.
A rule's dict is layered over ``_default``'s dict (when that is a dict), over
the :class:`PriorSettings` and :class:`GuideSettings` defaults.

Example::

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    >>> spec = PriorSpec({
    ...     "_default": {"num_components": 8},
    ...     "type:Conv2d": {"inclusion_prob": 0.1, "slab": "laplace"},
    ...     "3": "dense",
    ... })
    >>> {name: (s.guide.num_components, s.prior.inclusion_prob, s.prior.slab) for name, s in spec.resolve(net).items()}
    {'0.weight': (8, 0.1, 'laplace')}

The same spec as a TOML file (``spec.to_file("prior.toml")``, read back with
``PriorSpec.from_file``)::

    _default.num_components = 8

    "type:Conv2d".inclusion_prob = 0.1
    "type:Conv2d".slab = "laplace"

    "3" = "dense"

YAML (``.yaml``/``.yml``) and JSON (``.json``) files hold the same mapping.
This design follows torchao's ``FqnToConfig`` and TyXe's hide/expose selectors.
"""

import dataclasses
import difflib
import json
import math
import numbers
import os
import pathlib
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import pyro.distributions as dist
import tomli_w
import torch
import yaml
from torch import nn

from .io import atomic_write

__all__ = ["GuideSettings", "LayerSettings", "PriorSettings", "PriorSpec", "is_compressible"]

#: The string standing for "keep dense" (``None``) in files and dicts.
DENSE = "dense"
#: The string standing for ``init_rho=None`` (that is ``5 * gate_temperature``) in files and dicts.
AUTO = "auto"

_SLABS = ("normal", "laplace", "studentt")
_WINDOWS = ("layer", "equal", "outlier", "channel", "columns")
_INITS = ("kmeans", "fisher")
_TAILS = ("gmm", "full")
_FILE_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


# ---------------------------------------------------------------------------
# field checks: each returns the normalized value or raises ValueError


def _bad(name, value, allowed):
    return ValueError(f"{name}={value!r} is invalid: expected {allowed}")


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _real(name, value, allowed, ok):
    if not _is_real(value) or not math.isfinite(value) or not ok(float(value)):
        raise _bad(name, value, allowed)
    return float(value)


def _positive(name, value):
    return _real(name, value, "a finite number > 0", lambda x: x > 0)


def _probability(name, value):
    return _real(name, value, "a number in the open interval (0, 1)", lambda x: 0 < x < 1)


def _positive_int(name, value, minimum=1):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise _bad(name, value, f"an integer >= {minimum}")
    return int(value)


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise _bad(name, value, "one of " + ", ".join(map(repr, choices)))
    return value


def _init_rho(name, value):
    if value is None or (isinstance(value, str) and value == AUTO):
        return None
    return _real(name, value, f"a finite number, None or {AUTO!r} (meaning 5 * gate_temperature)", lambda x: True)


def _flag(name, value):
    if not isinstance(value, bool):
        raise _bad(name, value, "True or False")
    return value


_CHECKS = {
    "inclusion_prob": _probability,
    "slab": lambda n, v: _choice(n, v, _SLABS),
    "slab_scale": _positive,
    "slab_df": _positive,
    "num_components": _positive_int,
    "gate_temperature": _positive,
    "tau": _positive,
    "init_rho": _init_rho,
    "window": lambda n, v: _choice(n, v, _WINDOWS),
    "blocks": _positive_int,
    "group_size": _positive_int,
    "outlier_factor": _positive,
    "tails": lambda n, v: _choice(n, v, _TAILS),
    "train_anchors": _flag,
    "spike": _flag,
    "init": lambda n, v: _choice(n, v, _INITS),
}


def _check_keys(keys, where="prior setting", allowed=_CHECKS):
    unknown = [k for k in keys if k not in allowed]
    if unknown:
        key = unknown[0]
        if key in _CHECKS:  # a known setting, of the other object
            other = "GuideSettings" if key in _GUIDE_FIELDS else "PriorSettings"
            raise ValueError(f"{key!r} is not a {where}: it belongs to {other} (a spec rule may hold both; "
                             "LayerSettings.from_dict splits them)")
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown {where} {key!r}{hint}: expected one of {', '.join(allowed)}")


def _check_values(d):
    return {key: _CHECKS[key](key, value) for key, value in d.items()}


class _Settings:
    """Checks every field on construction; plain-dict round trip."""

    _where = "setting"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _CHECKS[field.name](field.name, value))

    def to_dict(self):
        """All fields as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Settings from a (partial) dict; missing fields take their defaults."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls._where}s must be a mapping of field names to values, got {d!r}")
        _check_keys(d, cls._where, {f.name: None for f in dataclasses.fields(cls)})
        return cls(**d)


@dataclass(frozen=True)
class PriorSettings(_Settings):
    """
    The spike-and-slab prior of one compressed layer (docs/method.md §2): what
    the model (:func:`sqs_pyro.models.sqs_model.spike_slab_prior`) reads.

    Values are checked on construction; a bad one raises :class:`ValueError`
    naming the field, the value and what is allowed.

    :param float inclusion_prob: prior inclusion probability λ₀, in (0, 1).
    :param str slab: the prior's slab, ``"normal"`` (closed-form KL bound),
        ``"laplace"`` or ``"studentt"``.
    :param float slab_scale: the slab's scale σ₀ > 0.
    :param float slab_df: degrees of freedom of the ``"studentt"`` slab.
    :param bool spike: ``False`` drops the spike: the prior is the plain slab
        ``N(0, σ₀²)`` (the paper's Gaussian-prior ablation; the gate is then a
        pruning device outside the KL, see :mod:`sqs_pyro.distributions.kl`).

    Example::

        >>> s = PriorSettings(slab="studentt", slab_df=4.0)
        >>> s.slab_distribution()
        StudentT(df: 4.0, loc: 0.0, scale: 3.0)
        >>> PriorSettings.from_dict(s.to_dict()) == s
        True
    """

    _where = "prior setting"

    inclusion_prob: float = 0.01
    slab: str = "normal"
    slab_scale: float = 3.0
    slab_df: float = 3.0
    spike: bool = True

    def slab_distribution(self, like=None):
        """
        The prior's slab: ``Normal(0, slab_scale)``, ``Laplace(0, slab_scale)``
        or ``StudentT(slab_df, 0, slab_scale)``.

        :param torch.Tensor like: optional tensor whose dtype and device the
            parameters take (default: torch's default dtype on the CPU).
        :rtype: ~pyro.distributions.TorchDistribution
        """
        like = torch.zeros(()) if like is None else like
        zero, scale = like.new_zeros(()), like.new_tensor(self.slab_scale)
        if self.slab == "normal":
            return dist.Normal(zero, scale)
        if self.slab == "laplace":
            return dist.Laplace(zero, scale)
        return dist.StudentT(like.new_tensor(self.slab_df), zero, scale)


@dataclass(frozen=True)
class GuideSettings(_Settings):
    """
    The variational family of one compressed layer (docs/method.md §3, §5): what
    the guide (:class:`sqs_pyro.guides.SQSGuide`, :mod:`sqs_pyro.guides.strategies`)
    reads.

    :param int num_components: K, the number of codebook values per group.
    :param float gate_temperature: s in γ = sigmoid(ρ / s).
    :param float tau: temperature of the component probabilities φ.
    :param init_rho: initial ρ; ``None`` (or ``"auto"``) means ``5 * gate_temperature``.
    :param str window: groups of a weight tensor: ``"layer"`` (one group),
        ``"equal"`` (``blocks`` equal-count windows of the sorted weights) or
        ``"outlier"`` (outlier-aware windows, docs/method.md §5; needs ``blocks >= 3``),
        ``"channel"`` (one group per output channel) or ``"columns"`` (one group per
        output channel and run of ``group_size`` input columns); see
        :mod:`sqs_pyro.guides.channels`.
    :param int blocks: number of windows.
    :param int group_size: input columns per group of ``window="columns"``; must
        divide the layer's number of columns (checked by :meth:`PriorSpec.resolve`).
    :param float outlier_factor: fences at Q1 − f·IQR and Q3 + f·IQR.
    :param str tails: outlier tails get their own ``"gmm"`` or stay ``"full"``
        precision; with ``"channel"``/``"columns"``, ``"full"`` keeps each group's
        weights beyond its own fences as sparse full-precision outliers and
        ``"gmm"`` keeps none.
    :param str init: codebook initialization: ``"kmeans"`` on the anchors, or
        ``"fisher"``, k-means weighted by each weight's diagonal Fisher information
        (SqueezeLLM; the guide then needs ``sensitivity=``, see
        :func:`sqs_pyro.guides.fisher.diagonal_fisher`).
    :param bool train_anchors: train the anchors (pretrained weights) too.

    Example::

        >>> GuideSettings(num_components=4, window="outlier", blocks=3).num_components
        4
        >>> GuideSettings(window="outlier", blocks=2)
        Traceback (most recent call last):
        ...
        ValueError: blocks=2 is invalid with window='outlier': expected an integer >= 3 (two tails plus at least one middle window)
    """

    _where = "guide setting"

    num_components: int = 16
    gate_temperature: float = 0.01
    tau: float = 1e-3
    init_rho: Optional[float] = None
    window: str = "layer"
    blocks: int = 4
    group_size: int = 128
    outlier_factor: float = 5.0
    tails: str = "gmm"
    train_anchors: bool = False
    init: str = "kmeans"

    def __post_init__(self):
        super().__post_init__()
        if self.window == "outlier" and self.blocks < 3:
            raise ValueError(
                f"blocks={self.blocks!r} is invalid with window='outlier': expected an integer >= 3 "
                "(two tails plus at least one middle window)"
            )


_PRIOR_FIELDS = tuple(f.name for f in dataclasses.fields(PriorSettings))
_GUIDE_FIELDS = tuple(f.name for f in dataclasses.fields(GuideSettings))


@dataclass(frozen=True)
class LayerSettings:
    """
    What a prior spec rule says of one compressed layer: its :class:`PriorSettings`
    (the model's prior) and its :class:`GuideSettings` (the variational family),
    selected by the same selector. A rule's dict holds the fields of both, flat.

    Example::

        >>> s = LayerSettings.from_dict({"inclusion_prob": 0.1, "num_components": 4})
        >>> s.prior.inclusion_prob, s.guide.num_components
        (0.1, 4)
        >>> LayerSettings.from_dict(s.to_dict()) == s
        True
    """

    prior: PriorSettings = dataclasses.field(default_factory=PriorSettings)
    guide: GuideSettings = dataclasses.field(default_factory=GuideSettings)

    def __post_init__(self):
        if not isinstance(self.prior, PriorSettings) or not isinstance(self.guide, GuideSettings):
            raise ValueError("LayerSettings(prior, guide) takes a PriorSettings and a GuideSettings; "
                             "use LayerSettings.from_dict for a flat dict of fields")

    def to_dict(self):
        """All fields of both, flat (``init_rho`` may be ``None``)."""
        return {**self.prior.to_dict(), **self.guide.to_dict()}

    @classmethod
    def from_dict(cls, d):
        """Settings from a flat (partial) dict of prior and guide fields; missing fields take their defaults."""
        if not isinstance(d, Mapping):
            raise ValueError(f"prior settings must be a mapping of field names to values, got {d!r}")
        _check_keys(d)
        return cls(PriorSettings(**{k: v for k, v in d.items() if k in _PRIOR_FIELDS}),
                   GuideSettings(**{k: v for k, v in d.items() if k in _GUIDE_FIELDS}))


# ---------------------------------------------------------------------------
# compressible modules


def _transformers_conv1d():
    # An instance of transformers' Conv1D can only exist once its module has
    # been imported, so looking it up in sys.modules never imports transformers.
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_compressible(module):
    """
    Whether ``module`` has a weight SQS compresses: :class:`~torch.nn.Linear`,
    :class:`~torch.nn.Conv1d`/``2d``/``3d`` or ``transformers``' ``Conv1D``.
    """
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return True
    conv1d = _transformers_conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def _class_names(cls):
    # Names a ``type:`` selector may use for each class of the MRO, most specific first.
    return [(c.__name__, f"{c.__module__}.{c.__qualname__}") for c in cls.__mro__]


def _param_name(module_name):
    return f"{module_name}.weight" if module_name else "weight"


def _examples(names, wanted=None, n=5):
    if not names:
        return "the network has no compressible modules (Linear, Conv1d/2d/3d, transformers Conv1D)"
    close = difflib.get_close_matches(wanted, names, n=3) if wanted else []
    shown = list(dict.fromkeys(close + names[:n]))
    more = f", ... ({len(names)} in all)" if len(names) > len(shown) else ""
    return "compressible modules are " + ", ".join(map(repr, shown)) + more


# ---------------------------------------------------------------------------
# the spec


class PriorSpec:
    """
    A declarative prior: selectors mapped to (partial) :class:`LayerSettings`
    (prior and guide settings, one flat dict per rule).
    See the module docstring for the selector syntax and precedence.

    :param rules: a mapping ``{selector: dict | LayerSettings | None | "dense"}``
        (a :class:`PriorSettings` or :class:`GuideSettings` fixes all of its half);
        ``None`` and ``"dense"`` keep the matched modules dense. Default:
        ``{"_default": {}}``, every compressible module with default settings.

    Every rule is checked on construction (unknown keys, bad values, bad
    selectors raise :class:`ValueError` naming the selector); whether selectors
    match anything is checked by :meth:`resolve`.

    Example::

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> spec = PriorSpec({"_default": {"slab_scale": 1.0}, "0": {"inclusion_prob": 0.5}})
        >>> [(name, s.prior.inclusion_prob, s.prior.slab_scale) for name, s in spec.resolve(net).items()]
        [('0.weight', 0.5, 1.0), ('2.weight', 0.01, 1.0)]
        >>> PriorSpec.from_dict(spec.to_dict()) == spec
        True
    """

    DEFAULT = "_default"

    def __init__(self, rules=None):
        if rules is None:
            rules = {self.DEFAULT: {}}
        if isinstance(rules, PriorSpec):
            rules = rules.to_dict()
        if not isinstance(rules, Mapping):
            raise ValueError(f"a prior spec must be a mapping of selectors to settings, got {rules!r}")
        self._rules = {}
        for selector, value in rules.items():
            if not isinstance(selector, str):
                raise ValueError(f"prior spec selector {selector!r} must be a string")
            self._rules[selector] = self._normalize_rule(selector, value)

        self._exact, self._regex, self._types = {}, [], []
        for selector in self._rules:
            if selector == self.DEFAULT:
                continue
            if selector.startswith("re:"):
                try:
                    self._regex.append((selector, re.compile(selector[3:])))
                except re.error as e:
                    msg = f"prior spec selector {selector!r} is not a valid regular expression: {e}"
                    raise ValueError(msg) from None
            elif selector.startswith("type:"):
                name = selector[5:].strip()
                if not name:
                    raise ValueError(f"prior spec selector {selector!r} names no type: write e.g. 'type:Conv2d'")
                self._types.append((selector, name))
            else:
                self._exact[selector] = None  # an ordered set

        # The full settings of every rule, layered over _default, checked now.
        base = self._rules.get(self.DEFAULT) or {}
        self._settings = {}
        for selector, rule in self._rules.items():
            if rule is None:
                self._settings[selector] = None
                continue
            layered = rule if selector == self.DEFAULT else {**base, **rule}
            try:
                self._settings[selector] = LayerSettings.from_dict(layered)
            except ValueError as e:
                over = f" (layered over {self.DEFAULT!r})" if base and selector != self.DEFAULT else ""
                raise ValueError(f"prior spec rule {selector!r}{over}: {e}") from None

    @staticmethod
    def _normalize_rule(selector, value):
        if value is None or (isinstance(value, str) and value == DENSE):
            return None
        if isinstance(value, (LayerSettings, PriorSettings, GuideSettings)):
            return value.to_dict()
        if not isinstance(value, Mapping):
            raise ValueError(
                f"prior spec rule {selector!r} = {value!r} is invalid: expected a table of prior settings, "
                f"None or {DENSE!r}"
            )
        try:
            _check_keys(value)
            return _check_values(value)
        except ValueError as e:
            raise ValueError(f"prior spec rule {selector!r}: {e}") from None

    # -- resolution ----------------------------------------------------------

    def match(self, name, module):
        """
        The selector that decides module ``name`` (``None`` if no rule matches).
        Compressibility is not checked here.
        """
        if name in self._exact:
            return name
        for selector, pattern in self._regex:
            if pattern.fullmatch(name):
                return selector
        best = None
        for selector, type_name in self._types:
            for depth, names in enumerate(_class_names(type(module))):
                if type_name in names:
                    if best is None or depth < best[0]:
                        best = (depth, selector)
                    break
        if best is not None:
            return best[1]
        return self.DEFAULT if self.DEFAULT in self._rules else None

    def settings(self, selector):
        """The full :class:`LayerSettings` of rule ``selector``, or ``None`` for a dense rule."""
        if selector not in self._settings:
            raise KeyError(f"no rule {selector!r} in {self!r}")
        return self._settings[selector]

    def resolve(self, net):
        """
        The settings of every compressed weight of ``net``.

        :param torch.nn.Module net: the network.
        :returns: ``{parameter name: LayerSettings}`` (e.g. ``"features.3.weight"``),
            in ``net.named_modules()`` order. A weight shared by several modules
            appears once, under the first compressed name.
        :raises ValueError: if an exact selector names no module or a module that
            is not compressible, a ``re:`` or ``type:`` selector matches no
            compressible module, or nothing at all is compressed.
        """
        modules = dict(net.named_modules(remove_duplicate=False))
        compressible = [(name, m) for name, m in modules.items() if is_compressible(m)]
        names = [name for name, _ in compressible]

        for selector in self._exact:
            if selector not in modules:
                raise ValueError(
                    f"prior spec selector {selector!r} names no module of {type(net).__name__}; "
                    + _examples(names, selector)
                    + self._weight_hint(selector, modules)
                )
            if not is_compressible(modules[selector]):
                raise ValueError(
                    f"prior spec selector {selector!r} names a {type(modules[selector]).__name__}, which is not "
                    "compressible (Linear, Conv1d/2d/3d, transformers Conv1D); " + _examples(names, selector)
                )
        for selector, pattern in self._regex:
            if not any(pattern.fullmatch(name) for name in names):
                raise ValueError(
                    f"prior spec selector {selector!r} matches no compressible module (the pattern must match "
                    "the whole module name); " + _examples(names)
                )
        for selector, type_name in self._types:
            if not any(type_name in n for _, m in compressible for n in _class_names(type(m))):
                kinds = sorted({type(m).__name__ for _, m in compressible})
                raise ValueError(
                    f"prior spec selector {selector!r} matches no compressible module; compressible module "
                    f"types in {type(net).__name__} are {', '.join(kinds) or 'none'}"
                )

        result, seen = {}, set()
        for name, module in compressible:
            selector = self.match(name, module)
            settings = None if selector is None else self._settings[selector]
            if settings is None or id(module.weight) in seen:
                continue
            if isinstance(module.weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"module {name!r} is an uninitialized lazy module: run a forward pass first")
            seen.add(id(module.weight))
            if settings.guide.window == "columns":
                _check_group_size(name, selector, module.weight.shape, settings.guide.group_size)
            result[_param_name(name)] = settings
        if not result:
            raise ValueError(f"{self!r} compresses nothing in {type(net).__name__}; " + _examples(names))
        return result

    @staticmethod
    def _weight_hint(selector, modules):
        for suffix in (".weight", ".bias"):
            if selector.endswith(suffix) and selector[: -len(suffix)] in modules:
                return f" (selectors name modules: did you mean {selector[: -len(suffix)]!r}?)"
        return ""

    # -- conversion ----------------------------------------------------------

    def to_dict(self, *, file_safe=False):
        """
        The rules as a plain dict (dense rules as ``None``); ``from_dict`` reads it back.
        With ``file_safe=True`` dense rules are ``"dense"`` and ``init_rho=None`` is
        ``"auto"``, as in files (TOML has no null).
        """
        if file_safe:
            return self._file_dict()
        return {selector: None if rule is None else dict(rule) for selector, rule in self._rules.items()}

    @classmethod
    def from_dict(cls, d):
        """Same as ``PriorSpec(d)``."""
        return cls(d)

    @classmethod
    def coerce(cls, obj):
        """
        A :class:`PriorSpec` from a spec, a dict, a file path, or ``None``
        (the default spec).
        """
        if isinstance(obj, cls):
            return obj
        if obj is None or isinstance(obj, Mapping):
            return cls(obj)
        if isinstance(obj, (str, os.PathLike)):
            return cls.from_file(obj)
        raise TypeError(f"cannot make a PriorSpec from a {type(obj).__name__}: pass a PriorSpec, a dict or a file path")

    def _file_dict(self):
        # Files have no null in TOML: "dense" for dense rules, "auto" for init_rho=None.
        out = {}
        for selector, rule in self._rules.items():
            if rule is None:
                out[selector] = DENSE
            else:
                out[selector] = {k: AUTO if (k == "init_rho" and v is None) else v for k, v in rule.items()}
        return out

    def to_file(self, path):
        """
        Write the spec to a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file,
        atomically. Dense rules are written as ``"dense"``.
        """
        path = pathlib.Path(path)
        suffix = _suffix(path)
        d = self._file_dict()
        if suffix == ".toml":
            text = _toml_dumps(d)
        elif suffix == ".json":
            text = json.dumps(d, indent=2) + "\n"
        else:
            text = yaml.safe_dump(d, sort_keys=False, default_flow_style=False)
        with atomic_write(path, "w") as f:
            f.write(text)

    @classmethod
    def from_file(cls, path):
        """Read a spec from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file."""
        path = pathlib.Path(path)
        suffix = _suffix(path)
        if not path.is_file():
            raise FileNotFoundError(f"prior spec file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if suffix == ".toml":
                d = tomllib.loads(text)
            elif suffix == ".json":
                d = json.loads(text)
            else:
                d = yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"cannot parse prior spec file {str(path)!r}: {e}") from None
        if not isinstance(d, Mapping):
            raise ValueError(
                f"prior spec file {str(path)!r} must hold a mapping of selectors to settings, got {type(d).__name__}"
            )
        try:
            return cls(d)
        except ValueError as e:
            raise ValueError(f"prior spec file {str(path)!r}: {e}") from None

    # -- dunder --------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, PriorSpec):
            return NotImplemented
        # Rule order matters only between regex and type selectors.
        return (
            self._rules == other._rules
            and [s for s, _ in self._regex] == [s for s, _ in other._regex]
            and [s for s, _ in self._types] == [s for s, _ in other._types]
        )

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}({self.to_dict()!r})"


def _check_group_size(name, selector, shape, group_size):
    columns = math.prod(shape[1:]) if len(shape) > 1 else 0
    if columns and columns % group_size == 0:
        return
    if not columns:
        raise ValueError(f"prior spec rule {selector!r}: window='columns' needs a weight with at least 2 dimensions, "
                         f"module {name!r} has shape {tuple(shape)}")
    near = sorted((d for d in range(1, columns + 1) if columns % d == 0), key=lambda d: (abs(d - group_size), d))[:4]
    raise ValueError(
        f"prior spec rule {selector!r}: group_size={group_size} does not divide the {columns} input columns of "
        f"module {name!r} (weight shape {tuple(shape)}): use one of {near}, or window='channel', or a separate "
        "rule for this module"
    )


def _suffix(path):
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise ValueError(
            f"prior spec file {str(path)!r} has an unknown extension {path.suffix!r}: "
            f"expected one of {', '.join(_FILE_SUFFIXES)}"
        )
    return suffix


def _toml_key(key):
    return tomli_w.dumps({key: 0})[: -len(" = 0\n")]


def _toml_value(value):
    return tomli_w.dumps({"v": value})[len("v = ") : -1]


def _toml_dumps(d):
    # Dotted keys (``sel.key = value``) keep the rules in order, which matters
    # for regex selectors: TOML tables would have to follow every "dense" entry.
    chunks = []
    for selector, rule in d.items():
        key = _toml_key(selector)
        if not isinstance(rule, dict):
            chunks.append(f"{key} = {_toml_value(rule)}\n")
        elif not rule:
            chunks.append(f"{key} = {{}}\n")
        else:
            chunks.append("".join(f"{key}.{_toml_key(k)} = {_toml_value(v)}\n" for k, v in rule.items()))
    return "\n".join(chunks)
