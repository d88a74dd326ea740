"""Progress reporting with rich, kept out of the stages themselves.

Stages accept an optional ``progress`` callable; the command line passes one that drives
a rich status line or bar, tests pass nothing. This keeps rich out of every stage's
signature and lets long work show what it is doing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

# Piped output (CI logs, files) gets a wide console so tables are not truncated.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


@contextmanager
def steps(title: str, *, enabled: bool = True):
    """A spinner with the current step's text; yields ``say(message)``."""
    if not enabled or not sys.stdout.isatty():
        def say(msg, *args):
            if enabled:
                console.print(f"[dim]{title}:[/] {msg}", highlight=False)
        yield say
        return
    with console.status(f"{title}…") as status:
        def say(msg, *args):
            status.update(f"{title}: {msg}")
        yield say


@contextmanager
def bar(title: str, total: int, *, enabled: bool = True):
    """A progress bar; yields ``advance(n=1)``."""
    if not enabled:
        yield lambda n=1: None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=not sys.stdout.isatty()) as p:
        task = p.add_task(title, total=total)
        yield lambda n=1: p.advance(task, n)
