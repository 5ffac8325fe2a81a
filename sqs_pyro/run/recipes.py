"""
Recipes: named presets of how a compression run trains the SQS posterior.

A recipe fixes the choices that the method leaves open (docs/method.md §6): which
score the pruning schedule ranks by, whether gates are learned or set by the
mask, whether the anchors (the continuous weights behind the component
probabilities) move, when the last mask falls, and how the learning rate
decays. :class:`~sqs_pyro.run.config.CompressConfig` takes every field of a recipe
that the user leaves unset from ``compress.recipe``; a field set explicitly wins.

``"sqs"`` (the default) was chosen by measurement
(``benchmarks/results/ablation_fashion-mnist_small-cnn.md``):

- ``score = "anchor"``: prune by the magnitude of the posterior location of each
  weight, its anchor ``|w_i|`` (trained, below); the paper's gate logit ``rho``
  ranks close to randomly once Adam has normalized its gradients;
- ``gates = "hard"``: ``gamma_i in {0, 1}`` set by the mask, so survivors keep
  ``gamma = 1`` and the trained network (``gamma * mu``) is the exported one
  (``mu``); the Bernoulli KL of a hard gate is a constant;
- ``anchors = "straight-through"``: anchors are trained through a
  straight-through estimator of the one-hot assignment (the forward pass still
  uses codebook values), so weights can change component as Deep Compression's
  fine-tuned weights do;
- ``refit_codebooks = True``: when the mask changes, each group's mixture is
  re-initialized by k-means on its surviving anchors (the codebook of the
  weights that remain, not of the ones pruned away);
- ``prune_start, prune_end = 0, 0.3``: the last mask falls at 30% of the run,
  leaving 70% to recover; ``lr_schedule = "cosine"``.

``"paper"`` reproduces the paper's choices (Wang et al. 2025; their released
code, docs/method.md §6, §8): score ``rho``, learned gates, frozen anchors, no refit,
pruning between 5/11 and 9/11 of the run (epochs 5 to 9 of 11), cosine learning rate.

Example::

    >>> from sqs_pyro.run.config import CompressConfig
    >>> CompressConfig().resolved().score, CompressConfig(recipe="paper").resolved().score
    ('anchor', 'rho')
    >>> CompressConfig(recipe="paper", score="anchor").resolved().gates
    'learned'
"""

#: Every recipe sets exactly these :class:`~sqs_pyro.run.config.CompressConfig` fields.
RECIPES = {
    "sqs": {
        "score": "anchor",
        "gates": "hard",
        "anchors": "straight-through",
        "refit_codebooks": True,
        "prune_start": 0.0,
        "prune_end": 0.3,
        "lr_schedule": "cosine",
    },
    "paper": {
        "score": "rho",
        "gates": "learned",
        "anchors": "frozen",
        "refit_codebooks": False,
        "prune_start": 5 / 11,
        "prune_end": 9 / 11,
        "lr_schedule": "cosine",
    },
}

RECIPE_FIELDS = tuple(RECIPES["sqs"])


def recipe_values(name):
    """The field values of recipe ``name`` (a copy)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {sorted(RECIPES)}")
    return dict(RECIPES[name])
