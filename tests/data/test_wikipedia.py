import importlib.util

import pytest

from sqs_pyro.data.wikipedia import load_wikipedia_articles, split_articles

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed")


@pytest.fixture(scope="module")
def articles():
    return load_wikipedia_articles()


def test_counts(articles):
    assert len(articles) == 106
    titles = [t for t, _ in articles]
    assert len(set(titles)) == 106 and titles[0] == "Anarchism"
    assert all(text.strip() for _, text in articles)
    assert not any(text.lower().startswith("#redirect") for _, text in articles)
    assert 2_500_000 < sum(len(text) for _, text in articles) < 3_500_000
    assert "'''" not in articles[0][1] and "[[" not in articles[0][1]


def test_split_is_deterministic(articles):
    compress, held_out = split_articles(articles)
    assert (len(compress), len(held_out)) == (85, 21)
    assert not {t for t, _ in compress} & {t for t, _ in held_out}
    assert split_articles(articles) == (compress, held_out)
    assert split_articles(articles, seed=1)[1] != held_out
