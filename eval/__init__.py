"""Invariance evaluation: protocols, metrics, typicality, the Lightning callback and reports."""

from eval.runner import evaluate

__all__ = ["evaluate"]
