"""Subcommands, one module each; importing them registers them on the `rzrt` group."""
from rzrt.cli import optimize, run  # noqa: F401
