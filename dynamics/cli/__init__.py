"""The `memdyn` command line: one module per command group, each command a thin shell over one
library call. Nothing heavy is imported here (commands import the library when they run), so
`memdyn --help` and usage errors answer at once.

Errors meant for users are `MemdynError`s and usage errors: printed as one line
`memdyn: error: ...`, exit status 2.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from dynamics.cli import canaries, capacity, dynamics, family, membership, predictor, report, run, score
from dynamics.cli.options import group
from dynamics.errors import MemdynError

app = group("Measure and explain verbatim memorization in causal language model families.")
app.add_typer(family.app, name="family")
app.command()(score.score)
app.command()(score.summarize)
app.command()(score.transitions)
app.command("dynamics")(dynamics.dynamics)
app.add_typer(predictor.app, name="predictor")
app.add_typer(capacity.app, name="capacity")
app.command()(membership.membership)
app.command()(canaries.canaries)
app.command("report")(report.report)
app.command()(run.run)


def _usage_message(e: BaseException) -> str | None:
    """The message of a command-line parse error. Typer ships its own copy of click, so its
    exceptions are not click's classes: recognise both by shape."""
    if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
        message = e.format_message()
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx is not None else "memdyn"
        return f"{message} (see `{command} --help`)"
    return None


def _os_message(e: OSError) -> str | None:
    """A write that failed for a reason the user can fix (full disk, permissions), as one line."""
    import errno

    where = f" at {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: free some space and rerun the same command (finished work is kept)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where} ({e.strerror}); choose a writable location"
    return None


INTERRUPTED = "memdyn: interrupted; finished work is kept, and rerunning the same command resumes"


def _fail(line: str, status: int) -> None:
    """End the command with one line on stderr, after any progress bar (closed first, so that
    the line is the last thing printed)."""
    bars = sys.modules.get("tqdm")
    if bars is not None:
        for bar in list(getattr(bars.tqdm, "_instances", [])):
            bar.close()
    print(line, file=sys.stderr)
    sys.exit(status)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars (read when it is imported)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends a command like Ctrl-C: cleanly, non-zero
    try:
        code = app(standalone_mode=False)
    except MemdynError as e:
        _fail(f"memdyn: error: {e}", 2)
    except KeyboardInterrupt:
        _fail(INTERRUPTED, 130)
    except (typer.Exit, typer.Abort) as e:
        sys.exit(getattr(e, "exit_code", 1))
    except OSError as e:
        message = _os_message(e)
        if message is None:
            raise
        _fail(f"memdyn: error: {message}", 2)
    except Exception as e:
        message = _usage_message(e)
        if message is None:
            raise
        _fail(f"memdyn: error: {message}", 2)
    if code == 130:  # typer turns a KeyboardInterrupt into Exit(130), which it returns here
        _fail(INTERRUPTED, 130)
    if isinstance(code, int) and code:
        sys.exit(code)
