"""A stop request that a signal handler may make.

A :class:`threading.Event` may not be set from a signal handler: Python runs the handler
in the main thread between two bytecodes of whatever that thread was doing, and
``Event.set`` takes the lock that the thread's own ``Event.wait`` may be holding at that
moment, so the process hangs for ever (see the warning under "Execution of Python
signal handlers", https://docs.python.org/3/library/signal.html). This flag takes no
lock: ``set`` is one store, and ``wait`` sleeps in short slices.
"""

from __future__ import annotations

import time

#: how long a wait sleeps before it looks at the flag again
SLICE_SECONDS = 0.05


class StopFlag:
    """``set``, ``is_set`` and ``wait`` as on an Event, safe in a signal handler."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep until the flag is set or ``timeout`` seconds have passed; the flag."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, SLICE_SECONDS))
        return self._set
