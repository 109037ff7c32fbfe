"""Activations (one record per invocation) and, later, usage and cost."""
