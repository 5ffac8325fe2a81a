"""Variational families for SQS: the guide, groups and windows, k-means init, inference."""

from .dgms import DGMSGuide
from .channels import channel_groups, column_groups
from .fisher import diagonal_fisher
from .groups import Grouping, build_grouping
from .input_norms import input_norms, wanda_scores
from .kmeans import KMeansInit, kmeans_1d, kmeans_groups
from .sqs_guide import SiteParams, SQSGuide

__all__ = ["DGMSGuide", "Grouping", "KMeansInit", "SQSGuide", "SiteParams", "build_grouping", "channel_groups",
           "column_groups", "diagonal_fisher", "input_norms", "kmeans_1d", "kmeans_groups", "wanda_scores"]
from .inference import bayesian_average, greedy_map, greedy_weights, hard_assignment, sample_networks

__all__ += ["bayesian_average", "greedy_map", "greedy_weights", "hard_assignment", "sample_networks"]
