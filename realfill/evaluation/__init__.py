"""Evaluation: RealBench metrics, `realfill eval`, and the HTML report."""
