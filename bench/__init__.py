"""Benchmarks and plotting helpers for comparing runs (not needed for training)."""
