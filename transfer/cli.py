"""What every command line shares: flags declared once, and one way to turn a ``UserError`` into one line.

    @command
    def main(argv=None) -> int: ...

``command`` adds nothing to ``argv`` handling itself: ``--debug`` (declared by ``add_common_flags``) is read from
``argv`` so that a traceback can be asked for even when argument parsing is what failed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from transfer.errors import UserError

EXIT_USER_ERROR = 2
DEBUG_ENV = "TRANSFER_DEBUG"


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--task-file``, as every command that reads tasks takes them."""
    parser.add_argument("--data-dir", default=None, help="data directory (else $TRANSFER_DATA_DIR, else ./data)")
    add_task_file_flag(parser)


def add_task_file_flag(parser: argparse.ArgumentParser) -> None:
    """``--task-file`` alone, for a command that reads the task table but no data (``transfer.graph``)."""
    parser.add_argument("--task-file", action="append", default=[],
                        help="extra task table (TOML) to load; repeat for several (else $TRANSFER_TASK_FILE)")


def add_profile_flags(parser: argparse.ArgumentParser, default_model: str) -> None:
    """``--profile``, ``--set`` and ``--model``: what every command that plans or trains runs takes."""
    parser.add_argument("--profile", default="quick", help="profile name in experiments/ or a .toml path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile value, e.g. --set epochs=3 --set max_train_examples=none")
    parser.add_argument("--model", default=default_model,
                        help="encoder: a local path or Hugging Face id; 'minilm' is the bundled all-MiniLM-L6-v2")


def add_results_flag(parser: argparse.ArgumentParser, **kwargs) -> None:
    """``--results``: the results store folder (one folder per run)."""
    kwargs.setdefault("default", "results")
    parser.add_argument("--results", help="results store folder (one folder per run)", **kwargs)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an input error (also ${DEBUG_ENV}=1)")


def pre_parse_task_files(argv: list[str] | None) -> list[str]:
    """The ``--task-file`` values, read before the full parser is built (its task choices depend on them)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task-file", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return known.task_file


def _debug_requested(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main``: a ``UserError`` becomes ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as exc:
            if _debug_requested(argv):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapper


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a batch system preempting us, a grid shutting its workers down), handled as Ctrl-C is."""


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Interrupted`, so the code that cleans up after Ctrl-C (stop the
    workers, release claims) runs for it too, instead of the process dying with its children left running.
    Signal handlers live in the main thread only; elsewhere (a Dask worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

