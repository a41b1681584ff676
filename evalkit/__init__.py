"""Evaluation: feature networks, sample-quality metrics, cached reference statistics and the
evaluation of tokenizers and pipelines (the `imagegen-evaluate` command is `commands.evaluate`)."""

from .features import (
    FEATURE_NETWORKS,
    ClassifierFeatures,
    FashionMNISTClassifier,
    FeatureNetwork,
    FeatureOutput,
    InceptionFID,
    find_inception_weights,
    get_feature_network,
    register_feature_network,
)
from .metrics import (
    GaussianStats,
    class_accuracy,
    feature_stats,
    fid,
    frechet_distance,
    inception_score,
    precision_recall,
)
from .reference import ReferenceStats, default_cache_dir, reference_stats

__all__ = [
    "FEATURE_NETWORKS", "ClassifierFeatures", "FashionMNISTClassifier", "FeatureNetwork", "FeatureOutput",
    "InceptionFID", "find_inception_weights", "get_feature_network", "register_feature_network",
    "GaussianStats", "class_accuracy", "feature_stats", "fid", "frechet_distance", "inception_score",
    "precision_recall", "ReferenceStats", "default_cache_dir", "reference_stats",
]
