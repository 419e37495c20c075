"""Subcommands, one module each; importing them registers them on the `rzrt` group."""
from rzrt.cli import bench, ops, optimize, profile, run, summary  # noqa: F401
