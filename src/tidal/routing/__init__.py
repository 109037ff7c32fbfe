"""HTTP routes by method and path (``GET /items/{id}`` -> a function) and their CORS policies.

``model`` validates what a user declares, ``table`` matches requests (pure, on the hot path),
``cors`` computes CORS headers (pure), ``service`` keeps the store and the served table in step.
"""
