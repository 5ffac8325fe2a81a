"""
An English Wikipedia excerpt from ``gensim``'s test data.

``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
is a 206-page MediaWiki dump; after dropping redirects and pages outside the
main namespace, 106 articles remain. Each is parsed with
:func:`gensim.corpora.wikicorpus.extract_pages` and stripped of wiki markup
with :func:`gensim.corpora.wikicorpus.filter_wiki`; ``clean=True`` also drops
bold/italic quote marks and collapses runs of blank lines.

The compress / held-out split is a seeded permutation of the articles.

Example::

    >>> articles = load_wikipedia_articles()  # doctest: +SKIP
    >>> len(articles), articles[0][0]  # doctest: +SKIP
    (106, 'Anarchism')
    >>> compress, held_out = split_articles(articles)  # doctest: +SKIP
    >>> len(compress), len(held_out)  # doctest: +SKIP
    (85, 21)
"""

import bz2
import importlib.util
import re
from pathlib import Path

import numpy as np

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _gensim():
    if importlib.util.find_spec("gensim") is None:
        raise ImportError("the Wikipedia excerpt comes with gensim's test data: `pip install gensim`")
    from gensim.corpora import wikicorpus

    return wikicorpus


def wikipedia_dump_path():
    """Path of the bz2 dump inside the installed gensim package."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise ImportError("the Wikipedia excerpt comes with gensim's test data: `pip install gensim`")
    for folder in spec.submodule_search_locations or ():
        path = Path(folder) / DUMP
        if path.is_file():
            return path
    raise FileNotFoundError(f"gensim is installed but lacks {DUMP}")


def _clean(text):
    text = re.sub(r"'{2,}", "", text)  # '''bold''' and ''italic'' marks
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def load_wikipedia_articles(*, clean=True, path=None):
    """
    The excerpt's articles, in dump order.

    :param bool clean: drop quote markup and extra blank lines after
        ``filter_wiki``.
    :param path: another MediaWiki ``.xml.bz2`` dump (default: gensim's).
    :returns: a list of ``(title, text)`` pairs (106 for gensim's excerpt).
    """
    wikicorpus = _gensim()
    path = Path(path) if path is not None else wikipedia_dump_path()
    articles = []
    with bz2.open(path, "rb") as f:
        for title, raw, _ in wikicorpus.extract_pages(f, filter_namespaces=("0",)):
            if not raw or raw.lstrip().lower().startswith("#redirect"):
                continue
            text = wikicorpus.filter_wiki(raw)
            text = _clean(text) if clean else text
            if text.strip():
                articles.append((title, text))
    return articles


def split_articles(articles, *, held_out_fraction=0.2, seed=0):
    """
    Deterministic split of whole articles into ``(compress, held_out)`` lists
    (each keeps dump order).
    """
    order = np.random.default_rng(seed).permutation(len(articles))
    held = set(order[: int(round(held_out_fraction * len(articles)))].tolist())
    compress = [a for i, a in enumerate(articles) if i not in held]
    held_out = [a for i, a in enumerate(articles) if i in held]
    return compress, held_out
