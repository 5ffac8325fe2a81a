"""Variational families for SQS: the guide, groups and windows, k-means init, inference (the DGMS guide of the
baselines is :class:`sqs_pyro.baselines.DGMSGuide`)."""

from .channels import channel_groups, column_groups
from .fisher import diagonal_fisher
from .groups import Grouping
from .input_norms import input_norms, wanda_scores
from .kmeans import KMeansInit, kmeans_1d, kmeans_groups
from .sqs_guide import SiteParams, SQSGuide
from .strategies import build_grouping

__all__ = ["Grouping", "KMeansInit", "SQSGuide", "SiteParams", "build_grouping", "channel_groups",
           "column_groups", "diagonal_fisher", "input_norms", "kmeans_1d", "kmeans_groups", "wanda_scores"]
from .inference import (bayesian_average, compressed_weights, greedy_map, greedy_weights, hard_assignment,
                        sample_networks)

__all__ += ["bayesian_average", "compressed_weights", "greedy_map", "greedy_weights", "hard_assignment",
            "sample_networks"]
