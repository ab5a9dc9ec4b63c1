"""Latency measurement, statistics and environment capture."""

from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.bench.stats import latency_summary, percentile, speedup

__all__ = ["environment", "latency_summary", "measure_latency", "percentile", "speedup"]
