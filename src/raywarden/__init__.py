"""raywarden: a zero-trust control plane around Ray."""

__version__ = "0.1.0"
