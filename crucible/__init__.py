"""crucible: raw text to an aligned language model."""
__version__ = "0.1.0"
