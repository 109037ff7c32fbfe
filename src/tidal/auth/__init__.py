"""API keys: scopes, hashing, the admin key file."""
