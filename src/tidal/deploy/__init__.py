"""Turning a path into revisions: bundle the code, inspect it, validate specs, store, activate."""
