"""Pruning baselines on one engine (``engine.py``): criteria in small files, schedules that train in others."""
