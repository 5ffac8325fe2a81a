"""
Token batches for transformers: texts turned into what
:class:`~sqs_pyro.run.trainer.SQSTrainer` reads, ``get(idx) -> (x, y)`` with ``x``
a dict of model inputs.

* :class:`TokenizedClassification` -- one sequence per text and a class label;
  a batch is cut to its longest sequence (dynamic padding), and with
  ``group_by_length=True`` each epoch's order puts texts of similar length in
  the same batch (:func:`length_grouped_permutation`).
* :class:`TokenWindows` -- texts tokenized, joined with a separator token and
  cut into fixed-length windows for a causal LM; ``y`` are the labels
  (the input ids, ``-100`` where nothing is scored).

:class:`ByteTokenizer` is a stand-in tokenizer (UTF-8 bytes) for tiny random
models in tests and ``--smoke`` runs.

Example::

    >>> import torch
    >>> tok = ByteTokenizer()
    >>> data = TokenizedClassification.from_texts(tok, ["hi", "hello"], [0, 1], max_length=8)
    >>> x, y = data.get(torch.tensor([0]))
    >>> x["input_ids"].tolist(), y.tolist()
    ([[104, 105]], [0])
    >>> windows = TokenWindows.from_texts(tok, ["abcdef", "ghij"], seq_len=4)
    >>> len(windows), windows.get(torch.tensor([0]))[0]["input_ids"].tolist()
    (3, [[97, 98, 99, 100]])
"""

import torch

__all__ = ["ByteTokenizer", "TokenWindows", "TokenizedClassification", "length_grouped_permutation"]


class ByteTokenizer:
    """
    UTF-8 bytes as token ids (``0..255``); ``eos_token_id = pad_token_id = 256``,
    so models need ``vocab_size >= 257``. For tests and smoke runs only.
    """

    vocab_size = 257
    eos_token_id = 256
    pad_token_id = 256

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))

    def __call__(self, texts, truncation=True, max_length=None, add_special_tokens=True):
        ids = [self.encode(t)[:max_length] if truncation and max_length else self.encode(t) for t in texts]
        return {"input_ids": ids}


def _encode_all(tokenizer, texts, max_length=None, add_special_tokens=True):
    out = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length,
                    add_special_tokens=add_special_tokens)
    return [list(ids) for ids in out["input_ids"]]


def length_grouped_permutation(lengths, batch_size, generator=None, megabatch=50):
    """
    A random order of ``range(len(lengths))`` in which each run of ``batch_size``
    holds sequences of similar length, so dynamically padded batches carry
    little padding. The recipe of transformers' ``LengthGroupedSampler``
    (``group_by_length``): shuffle, cut into megabatches of
    ``megabatch * batch_size``, sort each megabatch longest first. The whole
    batches are then shuffled too (a trailing partial batch stays last), so the
    lengths do not sweep from long to short through the epoch.

    Example::

        >>> import torch
        >>> lengths = torch.tensor([5, 40, 6, 38, 7, 39])
        >>> order = length_grouped_permutation(lengths, 2, torch.Generator().manual_seed(0))
        >>> sorted(order.tolist())
        [0, 1, 2, 3, 4, 5]
        >>> [sorted(lengths[order[i : i + 2]].tolist()) for i in range(0, 6, 2)]  # doctest: +SKIP
        [[38, 39], [6, 7], [5, 40]]
    """
    lengths = torch.as_tensor(lengths)
    perm = torch.randperm(len(lengths), generator=generator)
    size = max(1, int(megabatch) * int(batch_size))
    chunks = [c[torch.argsort(lengths[c], descending=True, stable=True)] for c in perm.split(size)]
    order = torch.cat(chunks) if chunks else perm
    full = len(order) // batch_size * batch_size
    batches = order[:full].view(-1, batch_size)
    batches = batches[torch.randperm(len(batches), generator=generator)]
    return torch.cat([batches.reshape(-1), order[full:]])


class TokenizedClassification:
    """
    Tokenized texts with class labels, for ``net(**x).logits``.

    :param list input_ids: one list of token ids per text.
    :param labels: class labels (ints).
    :param int pad_token_id: id used to pad a batch.
    :param bool token_type_ids: also return all-zero ``token_type_ids`` (BERT).
    :param bool group_by_length: :meth:`epoch_order` groups texts of similar
        length into the same batch (less padding, much faster on short texts).
    """

    def __init__(self, input_ids, labels, pad_token_id=0, token_type_ids=False, group_by_length=False):
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} sequences but {len(labels)} labels")
        lengths = torch.tensor([len(ids) for ids in input_ids], dtype=torch.long)
        if len(input_ids) and int(lengths.min()) == 0:
            raise ValueError("empty token sequence")
        width = int(lengths.max()) if len(input_ids) else 0
        self.input_ids = torch.full((len(input_ids), width), int(pad_token_id), dtype=torch.long)
        for i, ids in enumerate(input_ids):
            self.input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        self.lengths = lengths
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.token_type_ids = token_type_ids
        self.group_by_length = bool(group_by_length)

    @classmethod
    def from_texts(cls, tokenizer, texts, labels, max_length=64, token_type_ids=None, group_by_length=False):
        """
        Tokenize ``texts`` (truncated to ``max_length`` tokens, special tokens
        added). ``token_type_ids`` defaults to whether the tokenizer returns them.
        """
        ids = _encode_all(tokenizer, texts, max_length)
        if token_type_ids is None:
            token_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        pad = getattr(tokenizer, "pad_token_id", None)
        return cls(ids, labels, pad_token_id=0 if pad is None else pad, token_type_ids=token_type_ids,
                   group_by_length=group_by_length)

    def __len__(self):
        return len(self.labels)

    def epoch_order(self, batch_size, generator=None):
        """The order of one epoch: length-grouped when ``group_by_length``, else a plain shuffle."""
        if self.group_by_length:
            return length_grouped_permutation(self.lengths, batch_size, generator)
        return torch.randperm(len(self), generator=generator)

    def get(self, idx):
        """``({"input_ids", "attention_mask"[, "token_type_ids"]}, labels)``, cut to the batch's longest sequence."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(idx) else 0
        ids = self.input_ids[idx, :width]
        mask = (torch.arange(width) < lengths.unsqueeze(1)).long()
        x = {"input_ids": ids, "attention_mask": mask}
        if self.token_type_ids:
            x["token_type_ids"] = torch.zeros_like(ids)
        return x, self.labels[idx]

    def subset(self, n, seed=0):
        """The first ``n`` examples of a seeded permutation (all when ``n`` is None or too big)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        out = object.__new__(type(self))
        out.input_ids, out.lengths, out.labels = self.input_ids[idx], self.lengths[idx], self.labels[idx]
        out.token_type_ids, out.group_by_length = self.token_type_ids, self.group_by_length
        return out


class TokenWindows:
    """
    Fixed-length windows of a token stream, for a causal LM.

    :param torch.LongTensor tokens: ``(num_windows, seq_len)`` token ids.
    """

    def __init__(self, tokens):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (num_windows, seq_len), got shape {tuple(tokens.shape)}")
        self.tokens = tokens.long()

    @classmethod
    def from_texts(cls, tokenizer, texts, seq_len, max_windows=None, separator=None):
        """
        Tokenize every text (no special tokens), join them with ``separator``
        (default: the tokenizer's ``eos_token_id``) and cut the stream into
        ``seq_len``-token windows; the incomplete last window is dropped.

        :param int max_windows: keep only the first windows.
        """
        if separator is None:
            separator = getattr(tokenizer, "eos_token_id", None)
        stream = []
        for ids in _encode_all(tokenizer, texts, add_special_tokens=False):
            stream.extend(ids)
            if separator is not None:
                stream.append(int(separator))
        num = len(stream) // seq_len
        if max_windows is not None:
            num = min(num, int(max_windows))
        if num == 0:
            raise ValueError(f"{len(stream)} tokens do not fill one window of {seq_len}")
        return cls(torch.tensor(stream[: num * seq_len], dtype=torch.long).reshape(num, seq_len))

    @property
    def seq_len(self):
        return self.tokens.shape[1]

    def __len__(self):
        return self.tokens.shape[0]

    def get(self, idx):
        """``({"input_ids", "attention_mask"}, labels)``; every token is scored, so labels are the input ids."""
        ids = self.tokens[torch.as_tensor(idx, dtype=torch.long)]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids.clone()

    @property
    def num_tokens(self):
        return self.tokens.numel()
