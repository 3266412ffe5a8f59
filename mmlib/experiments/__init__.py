"""Experiments: the paper's tables as functions from (preset, databases, seeds) to tidy results."""
