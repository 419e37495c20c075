"""Subcommands, one module each; importing them registers them on the `rzrt` group."""
from rzrt.cli import run  # noqa: F401
