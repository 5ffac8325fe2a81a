"""
Grouping strategies by name: the :class:`~sqs_pyro.guides.groups.Grouping` that
a :class:`~sqs_pyro.GuideSettings` asks for (its ``window``, ``blocks``,
``outlier_factor``, ``tails`` and ``group_size``).

Example::

    >>> import torch
    >>> from sqs_pyro import GuideSettings
    >>> build_grouping(torch.randn(8, 8), GuideSettings(num_components=4, window="equal", blocks=2)).num_groups
    2
"""

from .channels import channel_groups, column_groups
from .groups import Grouping
from .windows import equal_windows, outlier_windows


def build_grouping(weight, settings):
    """
    The grouping a :class:`~sqs_pyro.GuideSettings` asks for: ``window="layer"``,
    ``"equal"`` or ``"outlier"`` (docs/method.md §5), ``"channel"`` or ``"columns"``
    (:mod:`sqs_pyro.guides.channels`).
    """
    if settings.window == "layer":
        return Grouping.layer(weight.shape)
    if settings.window in ("channel", "columns"):
        outliers = settings.outlier_factor if settings.tails == "full" else None
        if settings.window == "channel":
            return channel_groups(weight, outlier_factor=outliers)
        return column_groups(weight, settings.group_size, outlier_factor=outliers)
    if settings.window == "equal":
        return equal_windows(weight, settings.blocks)
    if settings.window == "outlier":
        return outlier_windows(weight, settings.blocks, settings.outlier_factor, tails=settings.tails)
    raise ValueError(
        f"unknown window strategy {settings.window!r}: use 'layer', 'equal', 'outlier', 'channel' or 'columns'")
