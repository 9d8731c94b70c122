"""Pruning baselines on one engine (``engine.py``), each declared once in the method registry (``registry.py``;
``catalog.py`` loads them all): criteria in small files, schedules that train in others."""
