"""Search processes on one host take turns: a CPU timing waits while another process computes, so it times the
model, not the other process's load (with `--workers 2` latencies came out twice and a feasible budget was refused)."""
from __future__ import annotations

import multiprocessing as mp
import time


def _hold_shared(ready, seconds: float) -> None:
    from nasdet.threads import timing_turn

    with timing_turn(exclusive=False):
        ready.set()
        time.sleep(seconds)


def _wait_while_another_computes(exclusive: bool, nested: bool = False) -> float:
    """Seconds a turn (``exclusive`` or shared) waits while another process holds a shared one for 1.5 s."""
    from nasdet.threads import timing_turn

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_shared, args=(ready, 1.5))
    other.start()
    assert ready.wait(30)
    t0 = time.perf_counter()
    with timing_turn(exclusive=exclusive):
        waited = time.perf_counter() - t0
        if nested:
            with timing_turn(exclusive=not exclusive):  # in this process: no second lock, no wait on itself
                pass
    other.join(30)
    return waited


def test_a_timing_waits_for_another_processes_compute_and_nests_in_its_own(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a lock of this test's own
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert _wait_while_another_computes(exclusive=True, nested=True) >= 1.0
    assert _wait_while_another_computes(exclusive=False) < 0.5  # shared turns do not wait for each other


def test_a_ctrl_c_while_waiting_for_a_turn_leaves_none_held(tmp_path, monkeypatch):
    """A notebook's interrupt during the wait: the next timing takes the lock again (it counted itself as a turn
    already held, so every later timing skipped the lock and timed beside other processes' compute)."""
    import fcntl
    import tempfile

    from nasdet import threads

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    real_flock, taken = fcntl.flock, []

    def interrupted(f, op):
        raise KeyboardInterrupt

    monkeypatch.setattr(fcntl, "flock", interrupted)
    try:
        with threads.timing_turn(exclusive=True):
            raise AssertionError("the turn was taken")
    except KeyboardInterrupt:
        pass
    assert threads._turns_held == 0
    monkeypatch.setattr(fcntl, "flock", lambda f, op: taken.append(op) or real_flock(f, op))
    with threads.timing_turn(exclusive=True):
        assert taken == [fcntl.LOCK_EX]
