"""
The block-wise likelihood of a transformer: one decoder layer at a time, its
output given the teacher's input modelled as Gaussian around the teacher
layer's output.

For decoder layer ``l`` with teacher input ``h_l`` and teacher output
``h_{l+1}`` (captured once on calibration text by forward hooks,
:func:`capture_block_data`), the model is

    theta_l ~ spike-and-slab prior (the prior spec, as for the whole model)
    h_{l+1} | h_l, theta_l ~ Normal(layer_l(h_l; theta_l), scale^2)   (every token and channel)

an ordinary :class:`~sqs_pyro.models.SQSModel` (the layer wrapped in a
:class:`Block`) with the :class:`~sqs_pyro.models.Gaussian` likelihood and the
windows as the data plate, so :class:`~sqs_pyro.guides.SQSGuide`,
:class:`~sqs_pyro.SQSELBO` and :class:`~sqs_pyro.run.trainer.SQSTrainer` run it
unchanged. A :class:`Block` keeps the layer at its place in the model
(``model.layers.3.mlp.up_proj.weight``), so the prior spec resolves exactly as
on the whole model and the guide's parameters carry the whole model's names.
The block-wise likelihood and KL are those of the whole model restricted to
the block's weights with a Gaussian on its output (tested).

The scale is **fixed**, by default the RMS of the teacher layer's update
``h_{l+1} - h_l`` over the calibration tokens (:attr:`BlockData.update_rms`):
the residual stream's size grows with depth, and a scale from the block's own
update gives every block the same balance between its data term and its KL
(a global constant would weight deep blocks far more); fixed, the objective
does not move under the optimizer, and a resumed run optimizes the same ELBO.

Example::

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from sqs_pyro.data.tokenized import TokenWindows
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=2, num_key_value_heads=1)
    >>> net = LlamaForCausalLM(cfg).eval()
    >>> calib = TokenWindows(torch.randint(0, 64, (6, 8)))
    >>> data = capture_block_data(net, calib, blocks=[1])[1]
    >>> len(data), tuple(data.targets.shape)
    (6, (6, 8, 16))
    >>> model = block_model(net, 1, {"re:.*mlp\\\\.up_proj": {"num_components": 4}}, data)
    >>> list(model.sites)
    ['model.layers.1.mlp.up_proj.weight']
"""

import copy

import torch
from torch import nn

from sqs_pyro.prior_spec import PriorSpec

from .likelihoods import Gaussian
from .sqs_model import SQSModel

__all__ = ["Block", "BlockData", "block_model", "block_prior_spec", "capture_block_data", "decoder_layers"]

#: Keyword arguments of a layer call that are not kept (a key/value cache is never built here).
_DROPPED = ("cache", "past_key_value", "past_key_values", "use_cache", "output_attentions")


def decoder_layers(net):
    """
    ``(prefix, layers)``: the name and the :class:`torch.nn.ModuleList` of the
    decoder (or encoder) layers of a transformers model: the first module list
    with ``config.num_hidden_layers`` entries (``model.layers`` for Llama,
    Mistral and Qwen2, ``transformer.h`` for GPT-2, ``bert.encoder.layer``).
    """
    n = getattr(getattr(net, "config", None), "num_hidden_layers", None)
    for name, module in net.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (n is None or len(module) == n):
            return name, module
    raise ValueError(f"{type(net).__name__} has no module list of {n} layers")


class Block(nn.Module):
    """
    One layer of a model at its place: ``Block(layer, "model.layers.3")`` holds
    ``layer`` under that path, so its parameters are named as in the whole model.
    ``forward(hidden_states, **kwargs)`` calls the layer with ``kwargs`` and the
    ``shared`` keyword arguments (e.g. Llama's rotary ``position_embeddings``)
    and returns its output hidden states.
    """

    def __init__(self, layer, path, shared=None):
        super().__init__()
        *parents, last = path.split(".")
        node = self
        for part in parents:
            child = nn.Module()
            node.add_module(part, child)
            node = child
        node.add_module(last, layer)
        self.path = path
        self.shared = dict(shared or {})

    @property
    def layer(self):
        return self.get_submodule(self.path)

    def forward(self, hidden_states, **kwargs):
        out = self.layer(hidden_states, **self.shared, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def extra_repr(self):
        return f"path={self.path!r}, shared={sorted(self.shared)}"


def _index(value, idx):
    if isinstance(value, (tuple, list)):
        return type(value)(_index(v, idx) for v in value)
    return value[idx]


class BlockData:
    """
    Training data of one block: ``get(idx) -> (x, y)`` with ``x`` the teacher's
    input hidden states (and any per-window keyword arguments of the layer, e.g. a
    padding ``attention_mask``) as a dict, ``y`` the teacher layer's output.

    :param torch.Tensor inputs: ``(N, T, H)`` teacher inputs.
    :param torch.Tensor targets: ``(N, T, H)`` teacher outputs.
    :param dict per_window: keyword arguments with a leading ``N`` dimension (tensors or tuples of them).
    :param dict shared: keyword arguments common to every window (passed to :class:`Block`).
    :param torch.dtype dtype: dtype the batches are returned in (the layer's); the
        tensors may be stored in a smaller one.
    """

    def __init__(self, inputs, targets, per_window=None, shared=None, dtype=None):
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
        self.inputs, self.targets = inputs, targets
        self.per_window = dict(per_window or {})
        self.shared = dict(shared or {})
        self.dtype = dtype or targets.dtype

    def __len__(self):
        return self.inputs.shape[0]

    def get(self, idx):
        x = {"hidden_states": self.inputs[idx].to(self.dtype)}
        x.update({k: _index(v, idx) for k, v in self.per_window.items()})
        return x, self.targets[idx].to(self.dtype)

    @property
    def update_rms(self):
        """RMS of the teacher layer's update ``targets - inputs`` (the default likelihood scale)."""
        total = 0.0
        for start in range(0, len(self), 64):
            d = self.targets[start : start + 64].double() - self.inputs[start : start + 64].double()
            total += float(d.square().sum())
        return (total / self.targets.numel()) ** 0.5

    @property
    def nbytes(self):
        """Bytes of the stored hidden states."""
        return sum(t.numel() * t.element_size() for t in (self.inputs, self.targets))


class _StopForward(Exception):
    """Raised by the hook of the last recorded layer: the rest of the teacher's pass is not needed."""


class _Recorder:
    """Forward hooks of one layer: its inputs, keyword arguments and outputs, batch by batch."""

    def __init__(self, layer, store_dtype, last=False):
        self.store_dtype = store_dtype
        self.last = last
        self.inputs, self.targets, self.kwargs = [], [], []
        self.handles = [layer.register_forward_pre_hook(self.pre, with_kwargs=True),
                        layer.register_forward_hook(self.post)]

    def pre(self, module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.inputs.append(hidden.detach().to(self.store_dtype))
        self.kwargs.append({k: v for k, v in kwargs.items() if k not in _DROPPED and v is not None})

    def post(self, module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        self.targets.append(out.detach().to(self.store_dtype))
        if self.last:
            raise _StopForward

    def remove(self):
        for h in self.handles:
            h.remove()

    def data(self, dtype):
        sizes = [h.shape[0] for h in self.inputs]
        shared, per_window = {}, {}
        for key in self.kwargs[0]:
            values = [kw[key] for kw in self.kwargs]
            if _all_equal(values) and _batch1(values[0]):
                shared[key] = values[0]
            else:
                per_window[key] = _concat([_expand(v, b) for v, b in zip(values, sizes)])
        return BlockData(torch.cat(self.inputs), torch.cat(self.targets), per_window, shared, dtype)


def _batch1(v):
    if isinstance(v, (tuple, list)):
        return all(_batch1(t) for t in v)
    return not torch.is_tensor(v) or (v.dim() > 0 and v.shape[0] == 1)


def _all_equal(values):
    def eq(a, b):
        if isinstance(a, (tuple, list)):
            return isinstance(b, (tuple, list)) and len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
        if torch.is_tensor(a):
            return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
        return a == b

    return all(eq(values[0], v) for v in values[1:])


def _expand(v, b):
    if isinstance(v, (tuple, list)):
        return type(v)(_expand(t, b) for t in v)
    if not torch.is_tensor(v):
        raise ValueError(f"a keyword argument of the layer changes between batches and is not a tensor: {v!r}")
    if v.shape[0] == b:
        return v
    if v.shape[0] == 1:
        return v.expand((b,) + v.shape[1:])
    raise ValueError(f"a keyword argument of shape {tuple(v.shape)} has no batch dimension of size {b} or 1")


def _concat(values):
    if isinstance(values[0], (tuple, list)):
        return type(values[0])(_concat([v[i] for v in values]) for i in range(len(values[0])))
    return torch.cat(values)


@torch.no_grad()
def capture_block_data(net, data, blocks=None, *, batch_size=4, store_dtype=None, forward=None):
    """
    The teacher's inputs and outputs of decoder layers, captured by forward hooks
    in one pass of ``net`` over the calibration ``data`` (``get(idx) -> (x, y)``,
    e.g. :class:`~sqs_pyro.data.tokenized.TokenWindows`), stopped after the last
    recorded layer.

    :param blocks: indices of the layers to record (default: all).
    :param int batch_size: windows per teacher forward pass.
    :param torch.dtype store_dtype: dtype the hidden states are kept in (default:
        the model's; ``torch.bfloat16`` halves the memory).
    :param callable forward: ``forward(net, x)``; default ``net(**x, use_cache=False)``.
    :returns: ``{index: BlockData}``.
    """
    _, layers = decoder_layers(net)
    blocks = list(range(len(layers))) if blocks is None else list(blocks)
    if not blocks:
        return {}
    dtype = next(net.parameters()).dtype
    recorders = {i: _Recorder(layers[i], store_dtype or dtype, last=i == max(blocks)) for i in blocks}
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(data), batch_size):
            x, _ = data.get(torch.arange(start, min(start + batch_size, len(data))))
            try:
                if forward is not None:
                    forward(net, x)
                else:
                    net(**x, use_cache=False)
            except _StopForward:
                pass
    finally:
        net.train(was_training)
        for r in recorders.values():
            r.remove()
    return {i: r.data(dtype) for i, r in recorders.items()}


def block_prior_spec(net, prior_spec, index):
    """
    The whole model's prior spec restricted to decoder layer ``index``: the
    settings it resolves to on ``net`` for that layer's weights, as exact
    selectors (so selectors naming other layers do not fail on the block).
    ``None`` when the spec compresses nothing in the layer.
    """
    prefix, _ = decoder_layers(net)
    path = f"{prefix}.{index}."
    resolved = PriorSpec.coerce(prior_spec).resolve(net)
    rules = {name[: -len(".weight")]: s.to_dict() for name, s in resolved.items() if name.startswith(path)}
    return PriorSpec(rules) if rules else None


def block_model(net, index, prior_spec, data, *, scale=None):
    """
    The SQS model of decoder layer ``index`` of ``net`` on its teacher ``data``
    (a :class:`BlockData`): a copy of the layer in a :class:`Block` (so that a fit
    moving its anchors, ``anchors="straight-through"``, leaves the teacher as it
    is), the whole model's prior
    spec restricted to it (:func:`block_prior_spec`), a
    :class:`~sqs_pyro.models.Gaussian` of fixed ``scale`` on its output
    (default: :attr:`BlockData.update_rms`), one data-plate entry per window.
    """
    prefix, layers = decoder_layers(net)
    spec = block_prior_spec(net, prior_spec, index)
    if spec is None:
        raise ValueError(f"the prior spec compresses nothing in {prefix}.{index}")
    block = Block(copy.deepcopy(layers[index]), f"{prefix}.{index}", data.shared)
    scale = data.update_rms if scale is None else float(scale)
    return SQSModel(block, spec, Gaussian(scale=scale), num_data=len(data))
