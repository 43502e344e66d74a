"""Run a command's ``main(argv)`` the way users expect: one readable line on error, ``--debug`` for a traceback."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

__all__ = ["run", "setup_logging", "catch_signals", "terminate_as_interrupt", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("timm", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; turn any exception into ``error: ...`` on stderr and a non-zero exit code.

    Ctrl-C exits with 130 after ``main`` has had the chance to save (it sees KeyboardInterrupt first).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    setup_logging()
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        if not isinstance(e, (ValueError, OSError)) and not getattr(e, "user_facing", False):
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError)) and e.filename:
        text = f"{e.strerror}: {e.filename}"
    if not isinstance(e, (ValueError, OSError)) and not getattr(e, "user_facing", False):
        text = f"{type(e).__name__}: {text}" if not text.startswith(type(e).__name__) else text
    return " ".join(text.split())


@contextlib.contextmanager
def catch_signals(
    handler: Callable[[int], None], signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), *, once: bool = False
) -> Iterator[None]:
    """Run ``handler(signum)`` on ``signals`` for the block, then restore what was there.

    The one place the commands touch signal handlers. A signal the process was started with ignored (``nohup``,
    ``cmd &`` in a script: SIGINT) stays ignored, and outside the main thread (where Python cannot install a
    handler) the block runs unchanged. ``once``: the previous handlers are back as soon as one signal arrives, so
    a second Ctrl-C / SIGTERM acts at once (aborts) instead of being queued behind the first.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: h for sig in signals if (h := signal.getsignal(sig)) is not signal.SIG_IGN}

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def on_signal(signum, _frame):
        if once:
            restore()
        handler(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        restore()


def terminate_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGTERM (a job scheduler's stop) behaves like Ctrl-C for the block: KeyboardInterrupt, a clean exit 130."""
    return catch_signals(_interrupt, (signal.SIGTERM,))


def _interrupt(_signum: int) -> None:
    raise KeyboardInterrupt
