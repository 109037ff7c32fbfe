"""The instance side: the worker main loop, the wire protocol, module loading."""
