"""
The hot path of SQS: component probabilities and the posterior-mean weight.

Every compressed weight ``theta_i`` has a posterior mean
``gamma_i * sum_k phi_ik mu_k`` (docs/method.md §4): the likelihood is evaluated there
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
operation). With the small temperatures of SQS, ``phi`` is one-hot to within
rounding for nearly every weight; those weights are recognized in ``O(1)``
each and cost no softmax at all (see :func:`component_expectations`).

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

#: Default of :func:`component_expectations`' ``one_hot`` (``False``: the dense
#: recomputation of ``phi`` for every weight).
ONE_HOT = True


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
    responsibilities of the anchor ``w_i`` (docs/method.md §3).

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
#
# With few groups (windows), a chunk reads and accumulates table columns as
# products with its (n, G) one-hot group matrix: a dense matmul is many times
# faster than gathering columns (``t[:, index]``) or ``index_add_`` on CPUs.

#: Tables with at most this many groups go through one-hot products.
ONE_HOT_GROUPS = 64


class _Codebook:
    """The codebook of one call, and the per-weight computations on it."""

    def __init__(self, index, logits, locs, scales):
        self.index, self.logits, self.locs, self.scales = index, logits, locs, scales
        # (a non-finite table entry would turn 0 * inf into NaN in the products)
        self.few_groups = (index is not None and locs.shape[1] <= ONE_HOT_GROUPS
                           and all(bool(torch.isfinite(t).all()) for t in (logits, locs, scales)))
        self._members = (None, None)  # (sel, one-hot group matrix of its weights)
        self.shared = index is None and all(t.shape[1] == 1 for t in (logits, locs, scales))
        self.per_weight = index is None and (logits.shape[1] > 1 or scales.shape[1] > 1)
        # a one-hot weight's code is its cell k * G + g of the (K, G) tables (k for one codebook);
        # ``num_cells`` (one past the last) marks the weights that are not one-hot
        self.groups = locs.shape[1] if index is not None else 1
        self.num_cells = locs.shape[0] * self.groups
        # log pi_k - log sigma_k - log sqrt(2 pi): once per call unless it varies per weight.
        self.offset = None if self.per_weight else self._offset(logits, scales)

    @staticmethod
    def _offset(logits, scales):
        return torch.log_softmax(logits, 0) - scales.log() - _HALF_LOG_2PI

    def groups_of(self, sel):
        """The (n, G) one-hot group matrix of the weights ``sel`` (kept for the chunk's further calls)."""
        if self._members[0] is not sel:
            index = self.index[sel]
            one_hot = torch.zeros(index.numel(), self.locs.shape[1], dtype=self.locs.dtype, device=index.device)
            self._members = (sel, one_hot.scatter_(1, index.unsqueeze(1), 1.0))
        return self._members[1]

    def rows(self, t, sel):
        """The (K, n) or (K, 1) values of the weights ``sel`` (a slice or an index)."""
        if self.few_groups:
            return t @ self.groups_of(sel).t().to(t.dtype)
        if self.index is not None:  # (index_select: several times faster than t[:, index] on CPUs)
            return t.index_select(1, self.index[sel])
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

    def rough_log_resp(self, anchor, sel):
        """
        ``l`` as :meth:`log_resp`, computed faster for a shared codebook as
        ``offset - (w / sigma - mu / sigma)**2 / 2`` (a few ulps of ``w / sigma``
        off, enough to tell one-hot weights).
        """
        if not self.shared:
            return self.log_resp(anchor, sel)[1]
        inv_sd = self.scales.reciprocal()
        z = torch.addmm(-self.locs * inv_sd, inv_sd, anchor[sel].unsqueeze(0))
        return z.square_().mul_(-0.5).add_(self.offset)

    def codes_of(self, sel, k):
        """The codes (int32) of the weights ``sel`` whose components are ``k``."""
        if self.index is None:
            return k.to(torch.int32)
        return (k * self.groups).add_(self.index[sel]).to(torch.int32)

    def picks(self, v, codes, out=None):
        """``v[k_i]`` of every weight (0 for the weights that are not one-hot), in one gather."""
        if v.shape[1] == self.groups:  # a (K, G) table or a (K, 1) codebook: read by the codes
            return torch.index_select(torch.cat([v.reshape(-1), v.new_zeros(1)]), 0, codes, out=out)
        k = codes.clamp(max=v.shape[0] - 1).long()  # one value per weight and component: (K, N)
        picked = v.gather(0, k.unsqueeze(0)).squeeze(0).masked_fill_(codes == self.num_cells, 0.0)
        return picked if out is None else out.copy_(picked)

    def add_picks(self, grad, codes, g):
        """The gradient of :meth:`picks`: ``grad[k_i] += g_i`` for every one-hot weight ``i``."""
        if grad.shape[1] == self.groups:  # one counting pass instead of an accumulating scatter
            counts = torch.bincount(codes, weights=g, minlength=self.num_cells + 1)
            grad += counts[: self.num_cells].view(grad.shape)
        else:
            k = codes.clamp(max=grad.shape[0] - 1).long().unsqueeze(0)
            grad.scatter_add_(0, k, g.masked_fill(codes == self.num_cells, 0.0).unsqueeze(0))

    def counts(self, codes, weights=None):
        """``sum_i weights_i [code_i = (k, g)]`` over the one-hot weights, a (K, G) table."""
        counts = torch.bincount(codes, weights=weights, minlength=self.num_cells + 1)
        return counts[: self.num_cells].view(self.locs.shape[0], self.groups)

    def accumulate(self, grad, rows, sel):
        """Add the per-weight gradient ``rows`` (K, n) of the weights ``sel`` to ``grad``."""
        if self.few_groups:
            grad.addmm_(rows, self.groups_of(sel))
        elif self.index is not None:
            grad.index_add_(1, self.index[sel], rows)
        elif grad.shape[1] == 1:
            grad += rows.sum(1, keepdim=True)
        else:
            grad[:, sel] = rows


def _floor(dtype):
    # Softmax entries below exp(floor) = eps**2 of their row's largest are set to
    # 0: negligible, and it keeps subnormal numbers (slow on CPUs) out of the
    # products of the backward pass.
    return 2 * math.log(torch.finfo(dtype).eps)


def _softmax(x):
    # softmax over the components (dim 0), entries below eps**2 relative set to 0.
    floor = _floor(x.dtype)
    e = (x - x.amax(0)).clamp_(min=floor - 1).exp_()
    torch.nn.functional.threshold_(e, math.exp(floor), 0.0)
    return e.div_(e.sum(0))


def _probs(log_resp, tau):
    # r = softmax(l) and phi = softmax(r / tau).
    r = _softmax(log_resp)
    return r, _softmax(r / tau)


def _dot(phi, v):
    # sum_k phi_ik v_k for (K, n) phi and (K, 1) or (K, n) values.
    return v[:, 0] @ phi if v.shape[1] == 1 else torch.linalg.vecdot(phi, v, dim=0)


def _one_hot_threshold(tau, dtype):
    # phi_ij / phi_ik <= exp(-(r_ik - r_ij) / tau): a responsibility gap of
    # 2 tau log(1 / eps) makes phi one-hot to within eps**2.
    return 2 * tau * math.log(1 / torch.finfo(dtype).eps)


def _split_one_hot(log_resp, threshold):
    """
    The most probable component ``k`` of each weight, and the (local) indices
    of the weights whose ``phi`` may not be one-hot (see
    :func:`_one_hot_threshold`). With ``s = sum_j exp(l_j - max_j l_j)``,
    ``r_k = 1 / s`` for the top component and every other ``r_j <= (s - 1) / s``,
    so their gap is at least ``(2 - s) / s``; ties give ``s >= 2``.
    """
    # (in place) clamped as in _softmax; it only makes s larger
    e = log_resp.sub_(log_resp.amax(0)).clamp_(min=_floor(log_resp.dtype)).exp_()
    s = e.sum(0)
    soft = (~(2 - s >= threshold * s)).nonzero().squeeze(1)
    # exp(l_j - max l) is exactly 1 at the top only, for every weight that is not soft
    order = torch.arange(log_resp.shape[0], dtype=e.dtype, device=e.device)
    k = (order @ e.floor_()).clamp_(0, log_resp.shape[0] - 1)
    return k, soft




#: The value range of each group's anchors is cut into this many cells, and the
#: cells that cannot be certified into ``_REFINE`` finer ones each.
_CELLS, _REFINE = 256, 64


def _certify(a, b, c, left, right, threshold):
    """
    For cells ``[left, right]`` (shape ``(G, M)``) and log responsibilities
    ``l_k(w) = a_k + b_k w + c_k w**2`` (``a, b, c`` of shape ``(G, 1, K)``),
    the component ``k`` on which ``phi`` is one-hot (see
    :func:`_split_one_hot`) for *every* ``w`` of the cell, else ``-1``:
    ``sum_j exp(l_j - l_k) <= 2 / (1 + threshold) - 1`` is checked with each
    ``l_j - l_k`` (a quadratic) replaced by its maximum over the cell.
    """
    mid = ((left + right) / 2).unsqueeze(-1)
    k = (a + mid * (b + mid * c)).argmax(-1, keepdim=True)
    a, b, c = (t - t.expand(k.shape[:-1] + t.shape[-1:]).gather(-1, k) for t in (a, b, c))
    left, right = left.unsqueeze(-1), right.unsqueeze(-1)
    top = torch.maximum(a + left * (b + left * c), a + right * (b + right * c))
    vertex = -b / (2 * c)
    inside = (c < 0) & (vertex > left) & (vertex < right)
    top = torch.where(inside, torch.maximum(top, a + vertex * (b + vertex * c)), top)
    top.scatter_(-1, k, float("-inf"))
    certified = torch.logsumexp(top, -1) <= math.log((1 - threshold) / (1 + threshold)) - 1e-9
    return torch.where(certified, k.squeeze(-1), -1)


class _Cells:
    """
    The one-hot components of a codebook as a function of the anchor value:
    a grid of ``_CELLS * _REFINE`` cells over each group's range of anchors,
    each with the component on which ``phi`` is one-hot throughout the cell
    or ``-1`` (uncertain). A weight's code is then a lookup, ``O(1)`` instead
    of ``O(K)``; only the weights in uncertain cells are examined one by one.
    """

    def __init__(self, book, anchor, threshold):
        index = book.index
        if index is None:
            lo, hi = anchor.aminmax()
            lo, hi = lo.reshape(1), hi.reshape(1)
        else:
            groups = book.locs.shape[1]
            lo = anchor.new_full((groups,), float("inf")).scatter_reduce_(0, index, anchor, "amin")
            hi = anchor.new_full((groups,), float("-inf")).scatter_reduce_(0, index, anchor, "amax")
            empty = lo > hi
            lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
        self.valid = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
        if not self.valid:
            return
        cells = _CELLS * _REFINE
        self.lo, self.scale = lo, cells / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        # quadratic coefficients of l_k(w), groups first, in float64
        f64 = lambda t: t.to(torch.float64).t().unsqueeze(1)  # noqa: E731
        mu, sd, offset = f64(book.locs), f64(book.scales), f64(book.offset)
        a, b, c = offset - mu * mu / (2 * sd * sd), mu / (sd * sd), -0.5 / (sd * sd)
        width = 1 / self.scale.to(torch.float64).unsqueeze(1)  # of a fine cell, (G, 1)
        lo64, margin = lo.to(torch.float64).unsqueeze(1), 0.01 * width  # margin: rounding of the lookup
        coarse = torch.arange(_CELLS, dtype=torch.float64, device=anchor.device) * _REFINE
        labels = _certify(a, b, c, lo64 + coarse * width - margin, lo64 + (coarse + _REFINE) * width + margin, threshold)
        labels = labels.repeat_interleave(_REFINE, dim=1)
        g, cell = (labels[:, ::_REFINE] < 0).nonzero(as_tuple=True)
        if g.numel():
            fine = cell.unsqueeze(1) * _REFINE + torch.arange(_REFINE, device=anchor.device)
            edge = lo64[g] + fine * width[g]
            g3 = g.unsqueeze(1).expand_as(fine)
            labels[g3, fine] = _certify(a[g], b[g], c[g], edge - margin[g], edge + width[g] + margin[g], threshold)
        self.labels = labels.reshape(-1)
        # the lookup table of codes (book.codes_of; book.num_cells where uncertain) with one more uncertain
        # cell at the top of each group: a position (w - lo) * scale lies in [0, cells] up to a rounding
        # that the certified margins absorb at the bottom, so truncation needs no clamp
        groups = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1)
        table = torch.where(labels < 0, book.num_cells, labels * book.groups + groups)
        self.table = torch.cat([table, table.new_full((table.shape[0], 1), book.num_cells)], 1).to(torch.int32)

    def lookup(self, anchor, sel, index):
        """Codes of the weights ``sel`` (``book.num_cells`` where uncertain)."""
        w = anchor[sel]
        if index is None:
            cell = (w - self.lo).mul_(self.scale).long()
            return self.table[0].index_select(0, cell)
        g = index[sel]
        cell = (w - self.lo[g]).mul_(self.scale[g]).long()
        return self.table[g, cell]


def _one_hot_codes(book, anchor, chunk, threshold, cache):
    """
    The codes of all weights (int32; see :meth:`_Codebook.codes_of`:
    ``k * G + g`` for a weight whose ``phi`` is one-hot on component ``k``,
    ``book.num_cells`` for the others) and the indices of the weights that are
    not one-hot, reused from ``cache`` while anchor and codebook are unchanged
    (the mean and the KL of one step share them).
    """
    key = tuple((t.data_ptr(), t._version) for t in (anchor, book.logits, book.locs, book.scales)) + (threshold,)
    if cache is not None and cache.get("key") == key:
        return cache["codes"], cache["soft"]
    codes = torch.empty(anchor.numel(), dtype=torch.int32, device=anchor.device)
    chunks = _chunks(anchor.numel(), chunk)
    # the cell tables pay off for a few groups, or when they are smaller than the weights; not with thousands
    # of small groups (one per output channel: 7 s for 1536 x 576 weights), where each weight's O(K) check
    # below is much cheaper
    cheap = book.groups <= ONE_HOT_GROUPS or book.groups * _CELLS * _REFINE <= anchor.numel()
    cells = _Cells(book, anchor, threshold) if (book.shared or book.index is not None) and cheap else None
    if cells is not None and cells.valid:
        # most weights fall in certified cells; look at the others one by one
        uncertain = []
        for sel in _chunks(anchor.numel(), chunk * book.locs.shape[0]):
            part = codes[sel]
            part.copy_(cells.lookup(anchor, sel, book.index))
            uncertain.append((part == book.num_cells).nonzero().squeeze(1) + sel.start)
        chunks = torch.split(torch.cat(uncertain), chunk)
    soft = []
    for sel in chunks:
        k, local = _split_one_hot(book.rough_log_resp(anchor, sel), threshold)
        part = book.codes_of(sel, k)
        codes[sel] = part.index_fill_(0, local, book.num_cells)
        soft.append(local + sel.start if isinstance(sel, slice) else sel[local])
    soft = torch.cat(soft) if soft else torch.zeros(0, dtype=torch.long, device=anchor.device)
    if cache is not None:
        cache.update(key=key, codes=codes, soft=soft)
    return codes, soft


def _chunks(n, chunk):
    return [slice(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


class _ComponentExpectations(torch.autograd.Function):
    """
    ``gate * sum_k phi_ik v_k`` for each of ``values``, recomputing ``phi`` in
    backward; with ``straight``, the first output's gradient also reaches the
    anchors times the gate (the straight-through estimator of
    :class:`~sqs_pyro.distributions.anchored.AnchoredSparseGMM`).
    """

    @staticmethod
    def forward(ctx, index, tau, chunk, one_hot, cache, straight, anchor, gate, logits, locs, scales, *values):
        book = _Codebook(index, logits, locs, scales)
        n = anchor.numel()
        outs = [anchor.new_empty(n) for _ in values]
        chunks = _chunks(n, chunk)
        threshold = _one_hot_threshold(tau, anchor.dtype)
        codes = soft = None
        if one_hot and threshold < 1:
            # weights with a one-hot phi take their component's values ...
            codes, soft = _one_hot_codes(book, anchor, chunk, threshold, cache)
            for out, v in zip(outs, values):
                book.picks(v, codes, out=out)
            # ... the others need all of phi
            chunks = torch.split(soft, chunk)
        for sel in chunks:
            _, phi = _probs(book.log_resp(anchor, sel)[1], tau)
            for out, v in zip(outs, values):
                out[sel] = _dot(phi, book.rows(v, sel))
        if gate is not None:
            for out in outs:
                out.mul_(gate)
        ctx.tau, ctx.chunk, ctx.straight = tau, chunk, straight
        ctx.save_for_backward(index, anchor, gate, logits, locs, scales, codes, soft, *values)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        index, anchor, gate, logits, locs, scales, codes, soft, *values = ctx.saved_tensors
        tau, chunk, need = ctx.tau, ctx.chunk, ctx.needs_input_grad
        book = _Codebook(index, logits, locs, scales)
        n = anchor.numel()
        grad_anchor = None
        if need[6] and ctx.straight:  # straight through: d out_0 / d anchor = gate
            grad_anchor = grads[0].clone() if gate is None else grads[0] * gate
        elif need[6]:
            grad_anchor = torch.zeros_like(anchor)
        grad_gate = torch.zeros_like(gate) if gate is not None and need[7] else None
        grad_log_pi = torch.zeros_like(logits)
        grad_locs, grad_scales = torch.zeros_like(locs), torch.zeros_like(scales)
        grad_values = [torch.zeros_like(v) if need[11 + j] else None for j, v in enumerate(values)]
        chunks = _chunks(n, chunk)
        if soft is not None:
            # one-hot weights: out_i = v[k_i], so d out_i / d v_k = [k == k_i] and nothing flows to phi
            # (the codes of the other weights point past the tables: they add nothing here)
            for j, (g, v, gv) in enumerate(zip(grads, values, grad_values)):
                if gv is not None:
                    if gate is None:
                        h = g
                    elif j == 0 and ctx.straight and grad_anchor is not None:
                        h = grad_anchor  # the same product
                    else:
                        h = g * gate
                    book.add_picks(gv, codes, h)
                if grad_gate is not None:
                    grad_gate += g * book.picks(v, codes)
            chunks = torch.split(soft, chunk)
        for sel in chunks:
            z, log_resp = book.log_resp(anchor, sel)
            r, phi = _probs(log_resp, tau)
            # d loss / d phi_ik = sum_v g_vi v_k; through phi = softmax(r / tau):
            # u_ik = phi_ik sum_v g_vi (v_k - out_vi) / tau.
            u = 0.0
            if grad_gate is not None:
                grad_gate[sel] = 0.0
            for g, v, gv in zip(grads, values, grad_values):
                # the gradient with respect to the ungated expectation
                gi, v = (g[sel] if gate is None else g[sel] * gate[sel]), book.rows(v, sel)
                if gv is not None:
                    book.accumulate(gv, phi * gi, sel)
                out = _dot(phi, v)
                if grad_gate is not None:
                    grad_gate[sel] += g[sel] * out
                u = (v - out).mul_(gi / tau).add_(u)
            u.mul_(phi)
            # through r = softmax(l): t_ik = r_ik (u_ik - sum_j r_ij u_ij)
            t = u.sub_((r * u).sum(0)).mul_(r)
            # l_ik = log pi_k - log sigma_k - z_ik^2 / 2 + const, z_ik = (w_i - mu_k) / sigma_k
            inv_sd = book.rows(scales, sel).reciprocal()
            book.accumulate(grad_log_pi, t, sel)
            tz = (t * z).mul_(inv_sd)
            if grad_anchor is not None:
                grad_anchor[sel] -= tz.sum(0)
            book.accumulate(grad_locs, tz, sel)
            # d l / d sigma_k = (z^2 - 1) / sigma_k
            book.accumulate(grad_scales, tz.mul_(z).sub_(t.mul_(inv_sd)), sel)
        # through log_pi = log_softmax(logits)
        grad_logits = grad_log_pi.sub_(torch.softmax(logits, 0) * grad_log_pi.sum(0, keepdim=True))
        return (None, None, None, None, None, None, grad_anchor, grad_gate, grad_logits, grad_locs, grad_scales,
                *grad_values)


def _layout(t, shape, num_components):
    # A tensor broadcastable to ``shape + (K,)`` as "shared" (K, 1) or "rows" (K, N).
    t = t.expand(t.shape[:-1] + (num_components,))
    if all(d == 1 for d in t.shape[:-1]):
        return t.reshape(num_components, 1)
    return t.expand(shape + (num_components,)).reshape(-1, num_components).t()


def _fused_layout(anchor, tensors, group_index):
    # (flat group index or None, per-component tensors in the layouts of the fused operation)
    shape = anchor.shape
    num_components = max(t.shape[-1] for t in tensors)
    if group_index is None:
        return None, [_layout(t, shape, num_components) for t in tensors]
    if group_index.shape != shape:
        raise ValueError(f"group_index has shape {tuple(group_index.shape)}, expected {tuple(shape)}")
    return group_index.reshape(-1), [t.expand(t.shape[0], num_components).t() for t in tensors]


def _default_chunk(anchor, num_components):
    elements = CHUNK_ELEMENTS_CPU if anchor.device.type == "cpu" else CHUNK_ELEMENTS_ACCELERATOR
    return max(1, elements // num_components)


def component_expectations(
    anchor, locs, scales, logits, tau, *values, gate=None, group_index=None, chunk_size=None, one_hot=None,
    cache=None, fused=True, straight_through=False,
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
    per-component KL (docs/method.md §4).

    The fused version (default) is a custom autograd function: nothing of
    size ``weights x K`` is kept for backward; ``phi`` is recomputed there,
    ``chunk_size`` weights at a time. Gradients flow to ``anchor``, ``gate``,
    ``locs``, ``scales``, ``logits`` and ``values``; they equal those of the
    plain version (``fused=False``, built from :func:`component_probs`) up to
    rounding. It is differentiable once (no double backward).

    With ``one_hot`` (the default), weights whose ``phi`` is one-hot
    to within ``eps**2`` (``eps`` of the dtype; with the usual small ``tau``
    nearly all of them) take their component's values without any softmax,
    keep one byte (the component) for backward, and pass no gradient through
    ``phi`` (it is below ``eps**2`` relative); only the other weights are
    recomputed in backward. For a codebook per layer or per group, these
    weights are found without ``O(K)`` work each: the range of the anchors is
    cut into cells, and a cell is certified one-hot on a component when a
    bound on the other components' responsibilities (quadratics in ``w``)
    holds over the whole cell; the weights of uncertain cells are examined
    one by one. The shortcut uses data-dependent indexing, which synchronizes
    an accelerator with the host a few times per call.

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
    :param torch.Tensor gate: optional per-weight factor (e.g. the gate
        ``gamma``) multiplying every result; with the weights' shape it is
        applied inside the fused operation, so the product is not stored
        either.
    :param torch.Tensor group_index: optional long tensor of shape ``S``: the
        group (row of the tables) of each weight.
    :param int chunk_size: weights per chunk (default: about
        :data:`CHUNK_ELEMENTS_CPU` / ``K``, more on accelerators).
    :param bool one_hot: use the one-hot shortcut (default: :data:`ONE_HOT`).
    :param dict cache: optional dict in which the one-hot shortcut keeps the
        components of the weights between calls with the same (unmodified)
        anchor and codebook, e.g. the mean and the KL of one training step.
    :param bool fused: ``False`` for the plain reference computation.
    :param bool straight_through: the first result keeps its value, but its
        gradient also reaches ``anchor`` as if ``gate * anchor`` were added
        (``+ gate * (anchor - anchor.detach())``, a straight-through estimator),
        without building that sum.
    :returns: a tuple with one tensor of shape ``S`` per value.
    """
    if not values:
        raise ValueError("component_expectations needs at least one tensor of values")
    shape = anchor.shape
    if not fused:
        if group_index is not None:
            locs, scales, logits = locs[group_index], scales[group_index], logits[group_index]
            values = tuple(v[group_index] for v in values)
        phi = component_probs(anchor, locs, scales, logits, tau)
        outs = tuple((phi * v).sum(-1) for v in values)
        if straight_through and anchor.requires_grad:  # (the gate multiplies it below)
            outs = (outs[0] + (anchor - anchor.detach()),) + outs[1:]
    else:
        index, tensors = _fused_layout(anchor, (logits, locs, scales) + values, group_index)
        num_components = tensors[0].shape[0]
        chunk = int(chunk_size) if chunk_size else _default_chunk(anchor, num_components)
        one_hot = ONE_HOT if one_hot is None else bool(one_hot)
        # a gate of the weights' own shape is applied inside (its product is not stored)
        inner = gate is not None and gate.shape == shape
        flat_gate = gate.reshape(-1) if inner else None
        outs = _ComponentExpectations.apply(
            index, float(tau), chunk, one_hot, cache, bool(straight_through), anchor.reshape(-1), flat_gate, *tensors
        )
        outs = tuple(o.view(shape) for o in outs)
        if inner:
            return outs
    return outs if gate is None else tuple(gate * o for o in outs)


def component_sums(anchor, locs, scales, logits, tau, *values, gate=None, group_index=None, chunk_size=None,
                   one_hot=None, cache=None):
    r"""
    The totals over all weights of :func:`component_expectations`,
    ``sum_i gate_i sum_k phi_ik v_k`` for each of ``values`` (e.g. the Jensen
    KL of a whole site), with the same arguments; equal to
    ``component_expectations(...)[j].sum()`` in value and gradients (up to the
    order of the additions).

    With the one-hot shortcut and a gate that takes no gradient (hard gates),
    nothing per weight is built: a one-hot weight ``i`` contributes
    ``gate_i v[k_i]``, so the one-hot weights sum to ``sum_k n_k v_k`` with
    ``n_k`` the (gated) count of weights in component ``k`` (one counting pass
    over the components that ``cache`` already holds when the mean was
    computed first), and only the weights that are not one-hot go through
    :func:`component_expectations`. Otherwise it is that function's sum.

    Example::

        >>> w = torch.tensor([-1.0, 0.1, 0.9])
        >>> locs, scales = torch.tensor([-1.0, 1.0]), torch.tensor([0.1, 0.1])
        >>> component_sums(w, locs, scales, torch.zeros(2), 1e-3, torch.tensor([0.5, 2.0]))
        (tensor(4.5000),)
    """
    one_hot = ONE_HOT if one_hot is None else bool(one_hot)
    threshold = _one_hot_threshold(tau, anchor.dtype)
    expectations = lambda *args, **kwargs: tuple(  # noqa: E731
        e.sum() for e in component_expectations(*args, chunk_size=chunk_size, **kwargs))
    if (not one_hot or threshold >= 1 or not values
            or (gate is not None and (gate.requires_grad or gate.shape != anchor.shape))):
        return expectations(anchor, locs, scales, logits, tau, *values, gate=gate, group_index=group_index,
                            one_hot=one_hot, cache=cache)
    index, tensors = _fused_layout(anchor, (logits, locs, scales) + values, group_index)
    book = _Codebook(index, *tensors[:3])
    if book.per_weight or any(v.shape[1] != (1 if index is None else book.locs.shape[1]) for v in tensors[3:]):
        return expectations(anchor, locs, scales, logits, tau, *values, gate=gate, group_index=group_index,
                            one_hot=one_hot, cache=cache)
    flat = anchor.reshape(-1)
    num_components = tensors[0].shape[0]
    chunk = int(chunk_size) if chunk_size else _default_chunk(anchor, num_components)
    with torch.no_grad():
        codes, soft = _one_hot_codes(book, flat.detach(), chunk, threshold, cache)
        counts = book.counts(codes, None if gate is None else gate.reshape(-1)).to(anchor.dtype)
    sums = [(counts * v).sum() for v in tensors[3:]]
    if soft.numel():
        if index is None:  # a codebook for the whole tensor: (1, K)
            codebook = [t.t() for t in tensors[:3]]
            soft_values = [v.t() for v in tensors[3:]]
        else:
            codebook, soft_values = (logits, locs, scales), values
        rest = expectations(flat[soft], codebook[1], codebook[2], codebook[0], tau, *soft_values,
                            gate=None if gate is None else gate.reshape(-1)[soft],
                            group_index=None if index is None else index[soft], one_hot=False)
        sums = [s + r for s, r in zip(sums, rest)]
    return tuple(sums)
