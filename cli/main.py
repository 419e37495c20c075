"""The `rzrt` command. Every error a user can cause prints one line and exits non-zero."""
from __future__ import annotations

import os
import sys

import click

from rzrt.errors import RzrtError


class Group(click.Group):
    """Turns RzrtError (and any other failure) into one line on stderr, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except RzrtError as e:
            raise click.ClickException(str(e).replace("\n", " ")) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:            # `rzrt profile ... | head`: the reader left; stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except Exception as e:
            if os.environ.get("RZRT_DEBUG"):
                raise
            raise click.ClickException(f"internal error: {type(e).__name__}: {e} "
                                       "(a bug in rzrt; RZRT_DEBUG=1 shows the traceback)") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rzrt")
def cli():
    """rzrt: run ONNX models on the CPU with hand-written numpy kernels."""


def main(argv=None):
    from rzrt.cli import commands  # noqa: F401  (registers the subcommands)
    return cli.main(args=argv, prog_name="rzrt")


if __name__ == "__main__":
    sys.exit(main())
