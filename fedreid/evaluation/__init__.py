"""Evaluation: ranking metrics (CMC rank-k, mAP, mINP) and retrieval feature extraction."""

from fedreid.evaluation.features import evaluate_model, extract_features
from fedreid.evaluation.ranking import cosine_distance, evaluate_ranking, evaluate_ranking_loop

__all__ = [
    "cosine_distance",
    "evaluate_model",
    "evaluate_ranking",
    "evaluate_ranking_loop",
    "extract_features",
]
