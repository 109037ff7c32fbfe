"""From a function name to an instance connection: revision choice, instance choice, cold starts."""
