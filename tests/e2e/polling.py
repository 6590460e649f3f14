"""The one polling helper of the end-to-end tests, for state that changes
without an event to wait on (an audit line, a metric, a file, a process
that starts listening)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str,
    pred: Callable[[], T],
    timeout: float = 20.0,
    *,
    every: float = 0.05,
    detail: Callable[[], str] | None = None,
    error: type[Exception] = AssertionError,
) -> T:
    """Calls `pred` every `every` seconds until it returns something truthy,
    and returns that. After `timeout` seconds raises `error` naming `what`,
    with `detail()` (the state seen last) when given. `pred` may raise to
    give up early (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            raise error(f"{message}: {detail()}" if detail is not None else message)
        time.sleep(every)
