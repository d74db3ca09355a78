"""Signal handlers that stay with the process that installs them.

A process forked while a Python handler is installed inherits it: a ``multiprocessing`` pool's workers (``nasdet
data make-synthetic``) and a DataLoader's. The CLI's SIGTERM handler raises KeyboardInterrupt, so the SIGTERM by
which a pool ends its idle workers printed a KeyboardInterrupt traceback per worker in `make demo`; the trainer's
(stop after the step) made a worker ignore the SIGTERM that ends it.
"""
from __future__ import annotations

import os
import signal


def for_this_process(handler):
    """``handler`` in the process calling this; in a forked child the signal's default action (SIGTERM: the
    child ends, as its parent meant)."""
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return None
        return handler(signum, frame)

    return handle
