"""Helpers the fuzz tests share: run one case under a time guard and check that whatever it
raises is an rtinfer error.

    err = run_case(f"seed {seed}: {text!r}", lambda: parse(text), seconds=2.0)
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rtinfer.errors import RtinferError


class CaseTimeout(AssertionError):
    """One fuzz case ran past its time guard: a hang (or near one) on hostile input."""


@contextlib.contextmanager
def case_guard(case: str, seconds: float) -> Iterator[None]:
    """Fail the test when the body runs longer than ``seconds``.

    In the main thread (pytest's, and each xdist worker's) a SIGALRM interrupts a hang inside
    Python code; elsewhere only the elapsed time is checked afterwards.
    """
    interrupt = threading.current_thread() is threading.main_thread() and hasattr(
        signal, "setitimer")

    def on_alarm(signum, frame):
        raise CaseTimeout(f"{case}: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm) if interrupt else None
    if interrupt:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    finally:
        if interrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - start
    if elapsed > seconds:
        raise CaseTimeout(f"{case}: took {elapsed:.1f} s (guard {seconds} s)")


def run_case(case: str, fn: Callable[[], Any], seconds: float) -> RtinferError | None:
    """Run ``fn`` under ``case_guard``: its rtinfer error (None when it succeeds); any other
    exception fails the test, naming the case so that its seed reproduces it."""
    with case_guard(case, seconds):
        try:
            fn()
        except RtinferError as e:
            return e
        except CaseTimeout:
            raise
        except Exception as e:  # MemoryError, RecursionError and the rest: all count
            pytest.fail(f"{case}: raised {type(e).__name__}, not an rtinfer error: {e}\n"
                        f"{traceback.format_exc(limit=-6)}", pytrace=False)
    return None
