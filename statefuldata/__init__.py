"""Deterministic, checkpointable PyTorch data pipelines."""
