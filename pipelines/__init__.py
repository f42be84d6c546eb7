"""nova's library: every piece of pipeline logic, importable without the CLI."""

__version__ = "0.1.0"
