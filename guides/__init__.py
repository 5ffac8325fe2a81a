"""Variational families for SQS: the guide, groups and windows, k-means init, inference."""

from .dgms import DGMSGuide
from .groups import Grouping, build_grouping
from .kmeans import KMeansInit, kmeans_1d
from .sqs_guide import SiteParams, SQSGuide

__all__ = ["DGMSGuide", "Grouping", "KMeansInit", "SQSGuide", "SiteParams", "build_grouping", "kmeans_1d"]
from .inference import bayesian_average, greedy_map, greedy_weights, hard_assignment, sample_networks

__all__ += ["bayesian_average", "greedy_map", "greedy_weights", "hard_assignment", "sample_networks"]
