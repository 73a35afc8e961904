"""How every AetherNet script talks to its user: bad input is one line on stderr and exit code 2
(never a traceback), an interrupt is one line and exit code 130, warnings and notes are printed
around progress bars, output folders are checked before anything is written, and reports and
summaries are Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from aether_arch import error_summary


class InputError(Exception):
    """Bad user input: reported as one line on stderr with exit code 2, never a traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are InputErrors (one line) instead of the usage block."""

    def error(self, message: str) -> None:  # argparse would print the whole usage block and exit
        raise InputError(message)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


def run_cli(prog: str, parse: Callable[[Sequence[str]], object], run: Callable[..., int], argv: Sequence[str]) -> int:
    """``run(parse(argv))`` with the convention of every script: its exit code; 0 after --help;
    2 and one line ``PROG: error: ...`` for an InputError; 130 and ``PROG: interrupted`` for
    Ctrl-C (every output is written atomically, so nothing half-written is left)."""
    try:
        try:
            args = parse(argv)
        except SystemExit as exc:  # --help prints and exits 0
            return int(exc.code or 0)
        return run(args)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def warn(message: str, warnings_seen: list[str]) -> None:
    """Print a warning (around any progress bar) and keep it for the run's report."""
    warnings_seen.append(message)
    tqdm.write(f"WARNING: {message}", file=sys.stderr)


def note(message: str) -> None:
    tqdm.write(f"note: {message}", file=sys.stderr)


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``, for errors raised by libraries (runtimes, decoders)."""
    return f"{type(exc).__name__}: {error_summary(exc)}"


def prepare_output_dir(path: str) -> Path:
    """Check an output folder before anything is read or written; the caller creates it only
    once every input has been validated."""
    output_dir = Path(path)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {path!r} exists and is not a folder")
    existing = output_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output-dir {path!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--output-dir {path!r} is not writable (no write permission on {str(existing)!r})")
    return output_dir


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns, so the raw text reads as a table too."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])
