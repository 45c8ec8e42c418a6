"""Evaluation stage: KILT page-level metrics and guess files."""
