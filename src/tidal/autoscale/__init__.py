"""Elastic scaling: a pure decider (decider.py) and the loop that feeds and applies it (loop.py)."""
