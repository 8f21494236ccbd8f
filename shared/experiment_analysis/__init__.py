"""Experiment analysis: per-arm data from the store, the statistics that compare arms, and the report built on them."""
