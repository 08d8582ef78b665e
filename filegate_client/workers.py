"""Worker threads for transfers, stopped together: when one fails, or on Ctrl-C, every other
worker stops at its next chunk, so what it leaves behind (a tus upload, a ``.part`` and its
checkpoint) is resumable by the next run of the same command (docs/client.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


class Cancelled(Exception):
    """Another transfer of the same command failed, or the user pressed Ctrl-C."""


class Cancel:
    """One flag for a whole command, checked by every worker between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled


def run_all[T, R](
    work: Callable[[T], R], items: Sequence[T], workers: int, cancel: Cancel
) -> list[R]:
    """``work`` on every item, ``workers`` at a time; the results in the order given. The first
    failure (or a KeyboardInterrupt while waiting) stops the rest and is raised once they have."""
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(work, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        failures = [e for f in futures if f.done() and (e := f.exception()) is not None]
        if failures:
            cancel.set()
            for future in futures:
                future.cancel()  # not started yet
            wait(futures)
            raise next((e for e in failures if not isinstance(e, Cancelled)), failures[0])
        return [future.result() for future in futures]
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
