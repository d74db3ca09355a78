"""SIGTERM in the processes a command forks.

A process forked while a Python handler is installed inherits it: a ``multiprocessing`` pool's workers (``nasdet
data make-synthetic``). The CLI's SIGTERM handler raises KeyboardInterrupt, so the SIGTERM by which a pool ends its
idle workers printed a KeyboardInterrupt traceback per worker in `make demo` (``for_this_process``). A training
DataLoader's workers serve through a scheduler's SIGTERM, so that the trainer finishes its step and saves
(``serve_through_sigterm``).
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (its exit hook registered first: ours, below, runs before it)
import os
import signal
import sys


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


def serve_through_sigterm(worker_id: int) -> None:
    """A training DataLoader's ``worker_init_fn``: the worker ignores SIGTERM. A scheduler's SIGTERM reaches the whole
    process group; torch's worker died of it, and the trainer, in the step it was to finish and save, failed on
    "DataLoader worker ... is killed by signal: Terminated" with nothing saved. The loader ends its workers as
    usual after the trainer's save (and a worker whose trainer is gone ends by torch's own watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def end_daemon_children(grace_s: float = 1.0) -> None:
    """At exit, end the daemonic children (loader workers) still alive: SIGTERM, and SIGKILL for those still there
    after ``grace_s``. multiprocessing's own exit hook sends SIGTERM alone, which a training loader's workers ignore
    (``serve_through_sigterm``), then joins them: a command that stopped on an error while its loader's iterator
    was alive (a corrupt image read in a worker) printed the error and hung in that join for ever (qa_docs #5).
    After a normal end none is left; a library user's own daemonic process still gets its SIGTERM first."""
    import multiprocessing
    import time

    children = [c for c in multiprocessing.active_children() if c.daemon]
    if not children:
        return
    if hasattr(signal, "SIGCHLD"):  # torch's handler would report each worker ended here (a traceback)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
        if child.is_alive():
            child.kill()


atexit.register(end_daemon_children)  # (atexit runs last-registered first: before multiprocessing's join)


LAUNCHER_PID_ENV = "NASDET_LAUNCHER_PID"  # set by `--workers N` for each worker it starts


def die_with_launcher() -> None:
    """In a worker of ``--workers N`` (``LAUNCHER_PID_ENV`` set): SIGTERM when the launcher dies, even by SIGKILL (an
    OOM kill, a scheduler's hard kill), as torchrun's agent has its ranks end (Linux's PR_SET_PDEATHSIG); the
    workers went on scoring with no one to write the results, and a rerun started N more beside them. A launcher
    already gone ends the worker at once."""
    pid = os.environ.get(LAUNCHER_PID_ENV)
    if not pid:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl here: the parent check below still covers a start after it
            pass
    if os.getppid() != int(pid):
        raise SystemExit(f"the --workers launcher (pid {pid}) is gone: this worker stops")
