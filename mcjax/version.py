"""The package version (the only thing here, so any layer can name it)."""

__version__ = "0.1.0"
