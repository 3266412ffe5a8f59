"""Experiments: the paper's tables as functions from (preset, databases, seeds) to tidy results, in
three rooms that import one way: plan/ (what is trained) <- results/ (rows become tables,
findings, the report) <- run/ (how a job runs). notebook.py is the notebooks' one façade."""
