"""panini: the command-line tool around panini_models."""
__version__ = "0.1.0"
