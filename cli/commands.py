"""Subcommands, one module each; importing them registers them on the `rzrt` group."""
from rzrt.cli import bench, optimize, profile, run, summary  # noqa: F401
