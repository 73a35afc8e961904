"""How every AetherNet script talks to its user: bad input is one line on stderr and exit code 2
(never a traceback), an interrupt is one line and exit code 130, warnings and notes are printed
around progress bars, output folders are checked before anything is written, and reports and
summaries are Markdown tables.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import errno
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from aether_arch import error_summary


class InputError(Exception):
    """Bad user input: reported as one line on stderr with exit code 2, never a traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are InputErrors (one line) instead of the usage block."""

    def error(self, message: str) -> None:  # argparse would print the whole usage block and exit
        raise InputError(message)


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (and at most ``maximum``)."""
    bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        text = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text[:40]!r}")
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {value}")
        return value

    return parse


def real_number(
    minimum: float, *, above: bool = False, below: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number >= ``minimum`` (> with ``above``), < ``below``, <= ``maximum``."""
    bounds = (
        f"{'>' if above else '>='} {minimum:g}"
        + (f" and < {below:g}" if below is not None else "")
        + (f" and <= {maximum:g}" if maximum is not None else "")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {text[:40]!r}") from None
        if (
            not math.isfinite(value)
            or value < minimum
            or (above and value == minimum)
            or (below is not None and value >= below)
            or (maximum is not None and value > maximum)
        ):
            raise argparse.ArgumentTypeError(f"expected a finite number {bounds}, got {text[:40]}")
        return value

    return parse


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, as in a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# More threads than this many per CPU only add switching; 10,000 threads would hang the machine.
THREADS_PER_CPU = 4


def thread_count(*, allow_default: bool) -> Callable[[str], int]:
    """An argparse ``type``: a thread count in 1..THREADS_PER_CPU x the CPUs (0 too, when
    ``allow_default``: the runtime's own default)."""
    return whole_number(0 if allow_default else 1, THREADS_PER_CPU * cpu_count())


SEED = whole_number(0, 2**32 - 1)  # numpy's seed range; torch accepts it too


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a file name, terminal colour codes) shown
    escaped, so that every message stays one line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


class Terminated(BaseException):
    """SIGTERM (``kill``, a scheduler's timeout): unwinds like Ctrl-C, so that every staging
    folder and temporary file is removed on the way out. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` (one bad image, one failed runtime)
    swallows it."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _redeliver_interrupts(hook: Callable[[object], None]) -> Callable[[object], None]:
    """``sys.unraisablehook`` that sends Ctrl-C or SIGTERM again when Python swallowed it: a
    signal's exception is raised at whatever Python code runs next, and inside a __del__ or a
    finaliser (garbage collection, at any moment) Python can only print it and go on, so the
    run would go on to the end as if the signal had never come. Re-sent, it lands in the code
    that runs after."""

    def redeliver(unraisable: object) -> None:
        signum = {KeyboardInterrupt: signal.SIGINT, Terminated: signal.SIGTERM}.get(type(unraisable.exc_value))
        if signum is None:
            hook(unraisable)
            return
        # from another thread, a moment later: re-sent from here, it would be raised in this hook, and lost again
        resend = threading.Timer(0.01, _thread.interrupt_main, args=(signum,))
        resend.daemon = True
        resend.start()
        redeliver.pending.append(resend)

    redeliver.pending = []  # cancelled when the run has ended anyway
    return redeliver


def run_cli(prog: str, parse: Callable[[Sequence[str]], object], run: Callable[..., int], argv: Sequence[str]) -> int:
    """``run(parse(argv))`` with the convention of every script: its exit code; 0 after --help;
    2 and one line ``PROG: error: ...`` for an InputError; 130 and ``PROG: interrupted`` for
    Ctrl-C, 143 and ``PROG: terminated`` for SIGTERM (every output is written atomically and
    temporary files are removed on the way out, so nothing half-written is left); 1 and one
    line for a failing disk (full, read-only, I/O error)."""
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    else:  # only the main thread may set handlers (tests call main() from worker threads)
        previous = None
    unraisable_hook = sys.unraisablehook
    sys.unraisablehook = redeliver = _redeliver_interrupts(unraisable_hook)
    try:
        try:
            args = parse(argv)
        except SystemExit as exc:  # --help prints and exits 0
            return int(exc.code or 0)
        return run(args)
    except InputError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BaseException as exc:
        # Libraries (the ONNX exporter, ...) re-raise an interrupt as their own error: its
        # cause tells what happened.
        cause = next((e for e in _chain(exc) if isinstance(e, (KeyboardInterrupt, Terminated, OSError))), None)
        if isinstance(cause, KeyboardInterrupt):
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        if isinstance(cause, Terminated):
            print(f"{prog}: terminated", file=sys.stderr)
            return 143
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            where = f" ({cause.filename})" if cause.filename else ""
            print(
                f"{prog}: error: {one_line(cause.strerror or cause)}{one_line(where)}; no file was left half-written",
                file=sys.stderr,
            )
            return 1
        raise
    finally:
        sys.unraisablehook = unraisable_hook
        for resend in redeliver.pending:
            resend.cancel()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 32:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# Errors of the disk being written, not of the program: reported in one line.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def warn(message: str, warnings_seen: list[str]) -> None:
    """Print a warning (around any progress bar) and keep it for the run's report."""
    warnings_seen.append(message)
    tqdm.write(f"WARNING: {one_line(message)}", file=sys.stderr)


def note(message: str) -> None:
    tqdm.write(f"note: {one_line(message)}", file=sys.stderr)


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message``, for errors raised by libraries (runtimes, decoders)."""
    return f"{type(exc).__name__}: {error_summary(exc)}"


def prepare_output_dir(path: str, option: str = "--output-dir") -> Path:
    """Check an output folder before anything is read or written; the caller creates it only
    once every input has been validated."""
    output_dir = Path(path)
    if output_dir.is_symlink() and not output_dir.exists():
        raise InputError(f"{option} {path!r} is a link to {os.readlink(output_dir)!r}, which does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{option} {path!r} exists and is not a folder")
    existing = output_dir.absolute()
    while not existing.exists():
        if existing.is_symlink():
            raise InputError(f"{option} {path!r} cannot be created: {str(existing)!r} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {path!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path!r} is not writable (no write permission on {str(existing)!r})")
    return output_dir


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Around the code that creates ``folder``: when it fails or is interrupted, the folders it
    created (``folder`` and missing parents) go again, if nothing was left in them."""
    missing = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first; rmdir refuses a folder that is not empty
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def format_size(size: int) -> str:
    """A byte count in KiB, MiB or GiB."""
    if size < 1 << 20:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1 << 20):.2f} MiB" if size < 1 << 30 else f"{size / (1 << 30):.2f} GiB"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns, so the raw text reads as a table too."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])
