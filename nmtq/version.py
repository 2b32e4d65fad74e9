"""nmtq's version, the same as pyproject.toml's: ``nmtq.__version__`` and :func:`nmtq.env.environment` read it here."""

__version__ = "0.1.0"
