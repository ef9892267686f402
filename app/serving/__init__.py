"""Serving internals: the service, micro-batcher, admission, memory budget, intake, drain,
metrics, settings."""
