"""Experiment stage: Hydra entry points, pipelines and the demo."""
