"""The `memdyn` command line. Each command validates its inputs, then calls one library function.

Errors meant for users are `MemdynError`s: printed as one line `memdyn: error: ...`, exit status 2.
"""

from __future__ import annotations

import sys

import typer

from dynamics.errors import MemdynError

app = typer.Typer(
    help="Measure and explain verbatim memorization in causal language model families.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    try:
        app(standalone_mode=False)
    except MemdynError as e:
        print(f"memdyn: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("memdyn: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own formatting and exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
