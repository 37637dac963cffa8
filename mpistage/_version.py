"""The package version, in one place (read by setuptools without importing mpistage)."""

__version__ = "0.1.0"
