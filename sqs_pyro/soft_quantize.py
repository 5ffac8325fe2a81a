"""
The hot path of SQS: component probabilities and the posterior-mean weight.

Every compressed weight ``theta_i`` has a posterior mean
``gamma_i * sum_k phi_ik mu_k`` (method.md §4): the likelihood is evaluated there
on every training step, so this is the one place to make fast. The component
probabilities ``phi_ik`` are not free parameters: they are a tempered softmax of
the mixture responsibilities of the (frozen) anchor weight ``w_i``.

:func:`component_probs` and :func:`posterior_mean` are the plain (reference)
versions: autograd keeps several ``weights x K`` tensors of them for the
backward pass. :func:`component_expectations` computes the same
``phi``-weighted sums ``sum_k phi_ik v_k`` with a custom autograd function that
keeps nothing of size ``weights x K``: ``phi`` is recomputed in the backward
pass, in chunks of the flattened weights, so that the recomputation too stays
within a bounded amount of memory (activation checkpointing [1] applied to one
operation).

Example::

    >>> import torch
    >>> w = torch.tensor([-1.0, 0.1, 0.9])
    >>> locs, scales = torch.tensor([-1.0, 1.0]), torch.tensor([0.1, 0.1])
    >>> phi = component_probs(w, locs, scales, torch.zeros(2), tau=1e-3)
    >>> posterior_mean(torch.ones(3), phi, locs)
    tensor([-1.,  1.,  1.])
    >>> kl_k = torch.tensor([0.5, 2.0])     # any per-component cost
    >>> m, e = component_expectations(w, locs, scales, torch.zeros(2), 1e-3, locs, kl_k)
    >>> m, e
    (tensor([-1.,  1.,  1.]), tensor([0.5000, 2.0000, 2.0000]))

**References**

[1] T. Chen, B. Xu, C. Zhang, C. Guestrin,
    "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174 (2016).
"""

import math

import torch
from torch.autograd.function import once_differentiable

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: Default number of ``weight x component`` elements per chunk of the fused
#: operation on the CPU; on other devices :data:`CHUNK_ELEMENTS_ACCELERATOR`.
#: Each chunk materializes about ten temporaries of this size.
CHUNK_ELEMENTS_CPU = 1 << 18
CHUNK_ELEMENTS_ACCELERATOR = 1 << 24


def responsibility_logits(anchor, locs, scales, logits):
    """
    Unnormalized log responsibilities ``log pi_k + log N(w; mu_k, sigma_k^2)``.

    :param torch.Tensor anchor: weights, any shape ``S``.
    :param torch.Tensor locs: component means broadcastable to ``S + (K,)``.
    :param torch.Tensor scales: component stds, broadcastable like ``locs``.
    :param torch.Tensor logits: mixing-weight logits, broadcastable like ``locs``.
    :returns: a tensor of shape ``S + (K,)``.
    """
    log_pi = torch.log_softmax(logits, dim=-1)
    z = (anchor.unsqueeze(-1) - locs) / scales
    return log_pi - 0.5 * z * z - scales.log() - _HALF_LOG_2PI


def component_probs(anchor, locs, scales, logits, tau):
    """
    ``phi_ik = softmax_k(r_ik / tau)`` where ``r_ik`` are the mixture
    responsibilities of the anchor ``w_i`` (method.md §3).

    :param float tau: temperature; small values make ``phi`` nearly one-hot.
    """
    r = torch.softmax(responsibility_logits(anchor, locs, scales, logits), dim=-1)
    return torch.softmax(r / tau, dim=-1)


def posterior_mean(gate, probs, locs):
    """
    The posterior-mean weight ``gamma * sum_k phi_k mu_k``.

    :param torch.Tensor gate: gate probabilities ``gamma``, shape ``S``.
    :param torch.Tensor probs: component probabilities ``phi``, shape ``S + (K,)``.
    :param torch.Tensor locs: codebook, broadcastable to ``S + (K,)``.
    """
    return gate * (probs * locs).sum(-1)


# ---------------------------------------------------------------------------
# The fused operation.
#
# Inside the autograd function the component dimension comes first, so that
# reductions over the K components are elementwise operations on vectors of
# weights (fast on CPUs). Each per-component tensor has one of three layouts:
#   shared (K, 1)  one codebook for every weight (a whole layer);
#   rows   (K, N)  one column per (flattened) weight;
#   table  (K, G)  one column per group, weight i reading column index[i].


class _Codebook:
    """The codebook of one call, and the per-weight computations on it."""

    def __init__(self, index, logits, locs, scales):
        self.index, self.logits, self.locs, self.scales = index, logits, locs, scales
        self.per_weight = index is None and (logits.shape[1] > 1 or scales.shape[1] > 1)
        # log pi_k - log sigma_k - log sqrt(2 pi): once per call unless it varies per weight.
        self.offset = None if self.per_weight else self._offset(logits, scales)

    @staticmethod
    def _offset(logits, scales):
        return torch.log_softmax(logits, 0) - scales.log() - _HALF_LOG_2PI

    def rows(self, t, sel):
        """The (K, n) or (K, 1) values of the weights ``sel`` (a slice or an index)."""
        if self.index is not None:
            return t[:, self.index[sel]]
        return t if t.shape[1] == 1 else t[:, sel]

    def log_resp(self, anchor, sel):
        """``z = (w - mu) / sigma`` and the log responsibilities ``l``, both (K, n)."""
        mu, sd = self.rows(self.locs, sel), self.rows(self.scales, sel)
        if self.offset is None:
            offset = self._offset(self.rows(self.logits, sel), sd)
        else:
            offset = self.rows(self.offset, sel)
        z = (anchor[sel] - mu).div_(sd)
        return z, torch.addcmul(offset, z, z, value=-0.5)

    def pick(self, v, sel, k):
        """``v[k_i]`` for every weight ``i`` of ``sel``."""
        if self.index is not None:
            return v[k, self.index[sel]]
        if v.shape[1] == 1:
            return v[:, 0][k]
        return v[:, sel].gather(0, k.unsqueeze(0)).squeeze(0)

    def add_picked(self, grad, sel, k, g):
        """The gradient of :meth:`pick`: ``grad[k_i] += g_i``."""
        if self.index is not None:
            grad.view(-1).index_add_(0, k * grad.shape[1] + self.index[sel], g)
        elif grad.shape[1] == 1:
            grad[:, 0].index_add_(0, k, g)
        else:
            grad[:, sel].scatter_add_(0, k.unsqueeze(0), g.unsqueeze(0))

    def accumulate(self, grad, rows, sel):
        """Add the per-weight gradient ``rows`` (K, n) of the weights ``sel`` to ``grad``."""
        if self.index is not None:
            grad.index_add_(1, self.index[sel], rows)
        elif grad.shape[1] == 1:
            grad += rows.sum(1, keepdim=True)
        else:
            grad[:, sel] = rows


def _probs(log_resp, tau):
    # r = softmax(l) and phi = softmax(r / tau) over the components (dim 0).
    r = torch.softmax(log_resp, 0)
    return r, torch.softmax(r / tau, 0)


def _dot(phi, v):
    # sum_k phi_ik v_k for (K, n) phi and (K, 1) or (K, n) values.
    return v[:, 0] @ phi if v.shape[1] == 1 else torch.linalg.vecdot(phi, v, dim=0)


def _top_two(x):
    # Largest value, its first index, and the gap to the runner-up (0 on ties), over dim 0.
    top = x.amax(0)
    is_top = x == top
    order = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    k = torch.where(is_top, order, x.shape[0]).amin(0)
    gap = top - x.masked_fill(is_top, float("-inf")).amax(0)
    return k, gap.masked_fill_(is_top.sum(0) > 1, 0.0)


def _split_one_hot(log_resp, tau):
    """
    The most probable component ``k`` of each weight and the (local) indices
    of the weights whose ``phi`` is *not* one-hot to within ``eps**2``:
    ``phi_ij / phi_ik <= exp(-(r_ik - r_ij) / tau)``, so a responsibility
    gap of ``2 tau log(1 / eps)`` suffices. The gap is bounded from the top
    two log responsibilities first (no exponentials), then computed exactly
    for the remaining candidates.
    """
    num_components = log_resp.shape[0]
    threshold = 2 * tau * math.log(1 / torch.finfo(log_resp.dtype).eps)
    k, d = _top_two(log_resp)
    # r_k - r_j >= (1 - e^-d) / (1 + (K - 1) e^-d) with d the gap of log responsibilities.
    e = torch.exp(-d)
    bound = (1 - e) / (1 + (num_components - 1) * e)
    candidates = (~(bound >= threshold)).nonzero().squeeze(1)
    if candidates.numel():
        _, gap = _top_two(torch.softmax(log_resp[:, candidates], 0))
        candidates = candidates[~(gap >= threshold)]
    return k, candidates


def _code_dtype(num_components):
    return torch.uint8 if num_components <= 256 else torch.int32


class _ComponentExpectations(torch.autograd.Function):
    """``(sum_k phi_ik v_k for v in values)``, recomputing ``phi`` in backward."""

    @staticmethod
    def forward(ctx, index, tau, chunk, one_hot, anchor, logits, locs, scales, *values):
        book = _Codebook(index, logits, locs, scales)
        n = anchor.numel()
        outs = [anchor.new_empty(n) for _ in values]
        codes, soft = None, []
        if one_hot:
            codes = torch.empty(n, dtype=_code_dtype(locs.shape[0]), device=anchor.device)
        for lo in range(0, n, chunk):
            sel = slice(lo, min(lo + chunk, n))
            _, log_resp = book.log_resp(anchor, sel)
            if one_hot:
                # weights with a one-hot phi take their component's values ...
                k, local = _split_one_hot(log_resp, tau)
                codes[sel] = k
                for out, v in zip(outs, values):
                    out[sel] = book.pick(v, sel, k)
                # ... the others, all of phi
                sel, log_resp = local + lo, log_resp[:, local]
                soft.append(sel)
            _, phi = _probs(log_resp, tau)
            for out, v in zip(outs, values):
                out[sel] = _dot(phi, book.rows(v, sel))
        soft = torch.cat(soft) if one_hot else None
        ctx.tau, ctx.chunk = tau, chunk
        ctx.save_for_backward(index, anchor, logits, locs, scales, codes, soft, *values)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        index, anchor, logits, locs, scales, codes, soft, *values = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        book = _Codebook(index, logits, locs, scales)
        n = anchor.numel()
        grad_anchor = torch.zeros_like(anchor) if ctx.needs_input_grad[4] else None
        grad_offset = torch.zeros_like(logits)
        grad_locs, grad_scales = torch.zeros_like(locs), torch.zeros_like(scales)
        grad_values = [torch.zeros_like(v) if ctx.needs_input_grad[8 + j] else None for j, v in enumerate(values)]
        if soft is None:
            selections = [slice(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
        else:
            # one-hot weights: d out_i / d v_k = [k == k_i], nothing flows to phi
            for g, gv in zip(grads, grad_values):
                if gv is not None:
                    g = g.index_fill(0, soft, 0.0)
                    for lo in range(0, n, chunk):
                        sel = slice(lo, min(lo + chunk, n))
                        book.add_picked(gv, sel, codes[sel].long(), g[sel])
            selections = torch.split(soft, chunk)
        for sel in selections:
            z, log_resp = book.log_resp(anchor, sel)
            r, phi = _probs(log_resp, tau)
            # d loss / d phi_ik = sum_v g_vi v_k; through phi = softmax(r / tau):
            # u_ik = phi_ik sum_v g_vi (v_k - out_vi) / tau.
            u = 0.0
            for g, v, gv in zip(grads, values, grad_values):
                g, v = g[sel], book.rows(v, sel)
                if gv is not None:
                    book.accumulate(gv, phi * g, sel)
                u = (v - _dot(phi, v)).mul_(g / tau).add_(u)
            u.mul_(phi)
            # through r = softmax(l): t_ik = r_ik (u_ik - sum_j r_ij u_ij)
            t = u.sub_((r * u).sum(0)).mul_(r)
            # l_ik = offset_k - z_ik^2 / 2, z_ik = (w_i - mu_k) / sigma_k
            inv_sd = book.rows(scales, sel).reciprocal()
            book.accumulate(grad_offset, t, sel)
            tz = (t * z).mul_(inv_sd)
            if grad_anchor is not None:
                grad_anchor[sel] = -tz.sum(0)
            book.accumulate(grad_locs, tz, sel)
            # d l / d sigma_k = z^2 / sigma_k (through z), the offset's -1 / sigma_k below
            book.accumulate(grad_scales, tz.mul_(z), sel)
        # through offset = log_softmax(logits) - log(scales) - const
        grad_logits = grad_offset - torch.softmax(logits, 0) * grad_offset.sum(0, keepdim=True)
        grad_scales.sub_(_sum_to(grad_offset, scales.shape) / scales)
        return (None, None, None, None, grad_anchor, grad_logits, grad_locs, grad_scales, *grad_values)


def _sum_to(t, shape):
    return t if t.shape == shape else t.sum_to_size(shape)


def _layout(t, shape, num_components):
    # A tensor broadcastable to ``shape + (K,)`` as "shared" (K, 1) or "rows" (K, N).
    t = t.expand(t.shape[:-1] + (num_components,))
    if all(d == 1 for d in t.shape[:-1]):
        return t.reshape(num_components, 1)
    return t.expand(shape + (num_components,)).reshape(-1, num_components).t()


def _default_chunk(anchor, num_components):
    elements = CHUNK_ELEMENTS_CPU if anchor.device.type == "cpu" else CHUNK_ELEMENTS_ACCELERATOR
    return max(1, elements // num_components)


def component_expectations(
    anchor, locs, scales, logits, tau, *values, group_index=None, chunk_size=None, one_hot=None, fused=True
):
    r"""
    ``phi``-weighted sums of per-component values, without storing ``phi``:

    .. math::

        E_i[v] = \sum_k \phi_{ik} v_k, \qquad
        \phi_{ik} = \mathrm{softmax}_k(r_{ik} / \tau)

    with ``r_ik`` the responsibilities of :func:`component_probs`. With
    ``values = (locs, c)`` this gives both the posterior-mean weight before
    its gate, ``m_i = sum_k phi_ik mu_k``, and a per-weight cost
    ``e_i = sum_k phi_ik c_k``, e.g. the Jensen KL term with ``c_k`` the
    per-component KL (method.md §4).

    The fused version (default) is a custom autograd function: nothing of
    size ``weights x K`` is kept for backward; ``phi`` is recomputed there,
    ``chunk_size`` weights at a time. Gradients flow to ``anchor``, ``locs``,
    ``scales``, ``logits`` and ``values``; they equal those of the plain
    version (``fused=False``, built from :func:`component_probs`) up to
    rounding. It is differentiable once (no double backward).

    With ``one_hot`` (the default on CPUs), weights whose ``phi`` is one-hot
    to within ``eps**2`` (``eps`` of the dtype; with a small ``tau`` nearly
    all of them) are recognized from their two largest log responsibilities:
    they take their component's values without any softmax, keep one byte
    (the component) for backward, and pass no gradient through ``phi`` (it
    is below ``eps**2`` relative); only the other weights are recomputed in
    backward.

    :param torch.Tensor anchor: weights ``w``, any shape ``S``.
    :param torch.Tensor locs: component means. Without ``group_index``,
        broadcastable to ``S + (K,)`` (e.g. ``(1, .., 1, K)`` for a layer, or
        ``S + (K,)`` gathered per weight); with ``group_index``, a ``(G, K)``
        table.
    :param torch.Tensor scales: component stds, laid out like ``locs``.
    :param torch.Tensor logits: mixing-weight logits, laid out like ``locs``.
    :param float tau: temperature of ``phi``.
    :param torch.Tensor values: one or more per-component tensors laid out
        like ``locs``.
    :param torch.Tensor group_index: optional long tensor of shape ``S``: the
        group (row of the tables) of each weight.
    :param int chunk_size: weights per chunk (default: about
        :data:`CHUNK_ELEMENTS_CPU` / ``K``, more on accelerators).
    :param bool one_hot: use the one-hot shortcut (default: on CPUs).
    :param bool fused: ``False`` for the plain reference computation.
    :returns: a tuple with one tensor of shape ``S`` per value.
    """
    if not values:
        raise ValueError("component_expectations needs at least one tensor of values")
    if not fused:
        if group_index is not None:
            locs, scales, logits = locs[group_index], scales[group_index], logits[group_index]
            values = tuple(v[group_index] for v in values)
        phi = component_probs(anchor, locs, scales, logits, tau)
        return tuple((phi * v).sum(-1) for v in values)
    shape = anchor.shape
    num_components = max(t.shape[-1] for t in (locs, scales, logits) + values)
    tensors = (logits, locs, scales) + values
    if group_index is None:
        index = None
        tensors = [_layout(t, shape, num_components) for t in tensors]
    else:
        if group_index.shape != shape:
            raise ValueError(f"group_index has shape {tuple(group_index.shape)}, expected {tuple(shape)}")
        index = group_index.reshape(-1)
        tensors = [t.expand(t.shape[0], num_components).t() for t in tensors]
    chunk = int(chunk_size) if chunk_size else _default_chunk(anchor, num_components)
    one_hot = anchor.device.type == "cpu" if one_hot is None else bool(one_hot)
    outs = _ComponentExpectations.apply(index, float(tau), chunk, one_hot, anchor.reshape(-1), *tensors)
    return tuple(o.view(shape) for o in outs)
