"""
Adapters for Hugging Face ``transformers`` models: which modules SQS compresses.

A transformers model is an ordinary ``nn.Module``, so :class:`~sqs_pyro.models.SQSModel`
takes it as it is: dict inputs are passed as ``net(**x)``, classification
heads are read from ``output.logits`` by :class:`~sqs_pyro.models.Categorical`,
and :class:`~sqs_pyro.models.CausalLM` scores next tokens. Nothing is
subclassed per architecture; :class:`torch.nn.Linear` and transformers'
``Conv1D`` (GPT-2) are both compressible modules.

What this module adds is the *default choice of compressed modules* per
architecture (``config.model_type``), following the SQS paper's runs
(docs/method.md §8):

* BERT (and RoBERTa): attention query, key, value and the attention output dense;
* Llama, Mistral and Qwen2: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``up_proj``, ``down_proj``
  (``gate_proj``, embeddings, norms and heads stay full precision);
* GPT-2 (a project choice, not in the paper): ``c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``.

:func:`default_prior_spec` returns these as a plain prior-spec dict of ``re:``
selectors, so it can be edited, saved to TOML and read back like any other
spec; ``include`` / ``exclude`` add or drop modules by exact name or regex.

Example::

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    >>> net = BertForSequenceClassification(cfg)
    >>> spec = default_prior_spec(net, num_components=16, exclude=["bert.encoder.layer.1.attention.self.key"])
    >>> compressed_modules(net, spec)[:4]  # doctest: +NORMALIZE_WHITESPACE
    ['bert.encoder.layer.0.attention.self.query', 'bert.encoder.layer.0.attention.self.key',
     'bert.encoder.layer.0.attention.self.value', 'bert.encoder.layer.0.attention.output.dense']
    >>> len(compressed_modules(net, spec))
    7
"""

import math

import torch

from sqs_pyro.prior_spec import LayerSettings, PriorSpec

__all__ = [
    "DEFAULT_MODULES",
    "causal_lm_forward",
    "causal_lm_perplexity",
    "classification_accuracy",
    "compressed_modules",
    "default_prior_spec",
    "model_type_of",
]

_BERT = (r"(?:.*\.)?attention\.self\.(?:query|key|value)", r"(?:.*\.)?attention\.output\.dense")
_LLAMA = (r"(?:.*\.)?self_attn\.[qkvo]_proj", r"(?:.*\.)?mlp\.(?:up|down)_proj")
_GPT2 = (r"(?:.*\.)?attn\.c_(?:attn|proj)", r"(?:.*\.)?mlp\.c_(?:fc|proj)")

#: ``config.model_type`` -> regexes (full-matched against module names) of the
#: modules compressed by default (docs/method.md §8).
DEFAULT_MODULES = {
    "bert": _BERT,
    "roberta": _BERT,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": _GPT2,
}


def model_type_of(model_or_config):
    """
    The ``model_type`` of a transformers model, a config, a config dict or a
    ``model_type`` string (e.g. ``"llama"``).
    """
    obj = model_or_config
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        obj = obj.get("model_type")
        if obj is None:
            raise ValueError("the config dict has no 'model_type'")
        return obj
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise ValueError(f"cannot tell the architecture of a {type(model_or_config).__name__}: pass a transformers "
                         "model, its config or a model_type string")
    return model_type


def _selector(s):
    if not isinstance(s, str) or not s:
        raise ValueError(f"include/exclude entries must be module names or 're:' patterns, got {s!r}")
    return s


def default_prior_spec(model_or_config, *, include=(), exclude=(), **settings):
    """
    The default prior-spec dict of a transformers architecture (docs/method.md §8).

    :param model_or_config: a transformers model, its config, a config dict or a ``model_type``.
    :param include: extra selectors (exact module names or ``re:`` patterns) to compress with ``settings``.
    :param exclude: selectors to keep dense; they take precedence over ``include`` and the defaults.
    :param settings: :class:`~sqs_pyro.LayerSettings` fields (prior and guide) shared by every
        compressed module (e.g. ``num_components=16, window="outlier"``).
    :returns: a dict ``{selector: settings dict or None}`` for :class:`~sqs_pyro.PriorSpec`;
        modules no rule matches stay dense.
    :raises ValueError: for an architecture without defaults (write the spec by
        hand, or pass ``include``), bad settings, or a selector both included and excluded.
    """
    model_type = model_type_of(model_or_config)
    LayerSettings.from_dict(settings)  # check the settings now, naming a bad field
    include, exclude = [_selector(s) for s in include], [_selector(s) for s in exclude]
    both = sorted(set(include) & set(exclude))
    if both:
        raise ValueError(f"selectors both included and excluded: {both}")
    defaults = DEFAULT_MODULES.get(model_type)
    if defaults is None and not include:
        raise ValueError(
            f"no default compressed modules for model_type {model_type!r} (known: {', '.join(sorted(DEFAULT_MODULES))}); "
            "pass include=[...] or write a PriorSpec by hand"
        )
    spec = {s: None for s in exclude}
    spec.update({s: dict(settings) for s in include})
    spec.update({"re:" + pattern: dict(settings) for pattern in defaults or ()})
    return spec


def compressed_modules(net, spec):
    """Names of the modules of ``net`` whose weights ``spec`` compresses, in module order."""
    return [name[: -len(".weight")] for name in PriorSpec.coerce(spec).resolve(net)]


def causal_lm_forward(call, x):
    """
    ``SQSModel(forward=...)`` for causal LMs: ``net(**x, use_cache=False)``, so
    training steps build no key/value cache.
    """
    return call(**x, use_cache=False)


@torch.no_grad()
def classification_accuracy(net, data, batch_size=256):
    """
    Accuracy of a sequence classifier (``net(**x).logits``) on ``data`` (``len``
    and ``get(idx) -> (x, y)``, e.g. :class:`~sqs_pyro.data.tokenized.TokenizedClassification`).
    When ``data`` has ``lengths``, batches hold sequences of similar length (less padding).
    """
    was_training = net.training
    net.eval()
    correct = 0
    lengths = getattr(data, "lengths", None)
    order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(len(data))
    try:
        for start in range(0, len(data), batch_size):
            x, y = data.get(order[start : start + batch_size])
            logits = getattr(net(**x), "logits")
            correct += int((logits.argmax(-1) == y.to(logits.device)).sum())
    finally:
        net.train(was_training)
    return correct / len(data)


@torch.no_grad()
def causal_lm_perplexity(net, data, batch_size=4):
    """
    Perplexity ``exp(mean next-token NLL)`` of a causal LM over every labelled
    token of ``data`` (``get(idx) -> (x, labels)`` with ``-100`` for unscored
    positions, e.g. :class:`~sqs_pyro.data.tokenized.TokenWindows`). Windows
    are scored independently (no overlap, no carried context).

    :returns: ``(perplexity, number of scored tokens)``.
    """
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(data), batch_size):
            x, labels = data.get(torch.arange(start, min(start + batch_size, len(data))))
            logits = net(**x, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(nll)
            count += int((target != -100).sum())
    finally:
        net.train(was_training)
    return math.exp(total / max(count, 1)), count
