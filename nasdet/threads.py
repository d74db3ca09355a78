"""CPU thread policy: OpenMP's own wait policy, and torch thread counts that follow the free cores.

libgomp (torch's OpenMP on Linux) lets a thread that waits at a barrier spin for a while (GOMP_SPINCOUNT,
300000 by default) before it sleeps. On an idle machine that is what makes a training step fast: with
``OMP_WAIT_POLICY=PASSIVE`` (no spinning) the demo's training ran at 0.6 of its speed (benchmarks/README.md,
"Thread policy"). On a machine whose cores are taken by other processes a spinning thread holds a core
that its sibling in the same step needs, and a step on 2 threads of a loaded 2-core machine was 10-20x
slower. One fixed wait policy serves only one of the two cases, and a machine's load changes while a run
goes on. So nasdet keeps OpenMP's default (or whatever the user set: ``OMP_WAIT_POLICY`` and
``GOMP_SPINCOUNT`` are read once, when OpenMP loads) and instead changes the number of torch threads as
the load changes: ``ThreadGovernor`` measures the CPU time that other processes take of this process's
cores and gives torch only the cores they leave free. One thread has no sibling to wait for, so nothing
spins in vain when the cores are taken; the full count comes back when they are free again.
``NASDET_ADAPTIVE_THREADS=0`` keeps the count fixed.
"""
from __future__ import annotations

import functools
import math
import os
import time

# set by `nasdet search --workers N` (and read like torchrun's LOCAL_WORLD_SIZE): processes sharing this host
LOCAL_PROCESSES_ENV = "NASDET_LOCAL_PROCESSES"
ADAPTIVE_ENV = "NASDET_ADAPTIVE_THREADS"


def wait_policy(environ: dict | None = None) -> str:
    """The OpenMP wait policy this process runs with, in words for the log."""
    env = os.environ if environ is None else environ
    policy, spin = env.get("OMP_WAIT_POLICY", ""), env.get("GOMP_SPINCOUNT", "")
    if not policy and not spin:
        return "OpenMP default wait policy (spin, then sleep)"
    return "wait policy set by the user: " + ", ".join(
        f"{k}={v}" for k, v in (("OMP_WAIT_POLICY", policy), ("GOMP_SPINCOUNT", spin)) if v)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this job on this host: torchrun's LOCAL_WORLD_SIZE, or nasdet's search workers."""
    for name in ("LOCAL_WORLD_SIZE", LOCAL_PROCESSES_ENV):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def thread_count(requested: int | None, processes: int | None = None, cores: int | None = None) -> int:
    """Torch threads per process: ``requested`` (default: all cores), capped so that processes x threads
    <= cores (at least 1)."""
    cores = cores or available_cores()
    processes = processes or local_processes()
    fair = max(1, cores // processes)
    return min(requested, fair) if requested else fair


def set_torch_threads(requested: int | None, processes: int | None = None) -> int:
    """Apply ``thread_count`` to torch (intra-op threads) and make it the most that ``govern`` gives;
    returns the count."""
    import torch

    global _governor
    n = thread_count(requested, processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if _governor is None or _governor.max_threads != n:
        _governor = ThreadGovernor(n)
    return n


def threads_for_load(max_threads: int, cores: int, others: float) -> int:
    """Torch threads when other processes keep ``others`` of this process's ``cores`` busy: the free cores,
    rounded (a process that takes half a core leaves room for a thread), at least 1, at most ``max_threads``."""
    return max(1, min(max_threads, math.floor(cores - others + 0.5)))


def busy_seconds(cpus: set[int], stat_text: str, ticks_per_s: float) -> float:
    """CPU seconds spent busy (not idle or waiting for I/O) so far on ``cpus``, from /proc/stat's text.
    Niced processes count: beside spinning threads even nice-10 ones slowed a 2-thread step 5x."""
    total = 0
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            total += user + system + irq + softirq + steal + nice  # guest time is in user
    return total / ticks_per_s


class ThreadGovernor:
    """Sets torch's threads to the cores that other processes leave free, measured over ``window`` s.

    ``poll()`` is cheap (a clock read) and loops call it once per step or batch; every ``window`` seconds it
    reads /proc/stat (this process's cores) and this process's own CPU time, and the difference is what the
    other processes took. Linux only; elsewhere, and with ``NASDET_ADAPTIVE_THREADS=0``, the count stays fixed.
    """

    def __init__(self, max_threads: int, window: float = 2.0):
        self.max_threads, self.window = max_threads, window
        self.cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.enabled = (os.environ.get(ADAPTIVE_ENV, "1") != "0" and max_threads > 1 and os.path.isfile("/proc/stat")
                        and bool(self.cpus))
        self.ticks_per_s = float(os.sysconf("SC_CLK_TCK")) if self.enabled else 100.0
        self.changes = 0
        self._mark: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            text = f.read()
        return time.monotonic(), busy_seconds(self.cpus, text, self.ticks_per_s), time.process_time()

    def poll(self) -> int | None:
        """Adjust torch's threads if a window has passed; returns the new count when it changed."""
        if not self.enabled:
            return None
        if self._mark is None:
            self._mark = self._sample()
            return None
        if time.monotonic() - self._mark[0] < self.window:
            return None
        now = self._sample()
        wall, busy, own = (b - a for a, b in zip(self._mark, now))
        self._mark = now
        others = max(0.0, busy - own) / max(wall, 1e-6)
        return self._apply(threads_for_load(self.max_threads, len(self.cpus), others))

    def _apply(self, n: int) -> int | None:
        import torch

        if torch.get_num_threads() == n:
            return None
        torch.set_num_threads(n)
        self.changes += 1
        return n


_governor: ThreadGovernor | None = None


def loader_workers(setting: int | str, device=None, cores: int | None = None, threads: int | None = None) -> int:
    """Data loader worker processes for ``data.num_workers``: a number as given; ``auto``: on the CPU, the
    cores this process's torch threads leave free (at most 4), so 0 when the threads take every core: a
    worker process there takes turns on the cores with threads that spin at each barrier, and on 2 cores
    loading in the main process trained 1.3x faster than one worker (benchmarks/README.md, "channels_last and
    data loading in the main process"); on an accelerator this process's share of the cores but one (at most 8), since the
    main process only feeds the device. ``cores`` (this process's share) and ``threads`` default to the
    machine's and torch's."""
    if setting != "auto":
        return int(setting)
    cores = cores or thread_count(None)  # this process's fair share of the cores
    if device is not None and str(device).split(":")[0] not in ("cpu", "auto"):
        return max(0, min(8, cores - 1))
    if threads is None:
        if _governor is not None:
            threads = _governor.max_threads  # not the count it lowered for now: the load passes, the loader stays
        else:
            import torch

            threads = torch.get_num_threads()
    return max(0, min(4, cores - threads))


_api_depth = 0  # stage calls open in this process (the pipeline's stages are calls inside its own)


def keeps_callers_threads(stage):
    """A stage's Python API: torch's thread count and the governor are the caller's again when the outermost stage
    call returns. Stages set their config's threads, which a notebook's own torch code, and the next call's timing
    at "torch's" count (``cost.threads`` unset), inherited: one config's latency came out at 2 or 1 thread by what
    ran before it. Inside a call (the pipeline's stages) counts carry from stage to stage as they always did."""
    @functools.wraps(stage)
    def call(*args, **kwargs):
        import torch

        global _api_depth, _governor
        outermost = _api_depth == 0
        before, governor = torch.get_num_threads(), _governor
        _api_depth += 1
        try:
            return stage(*args, **kwargs)
        finally:
            _api_depth -= 1
            if outermost:
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)
                _governor = governor
    return call


def configured_threads() -> int:
    """The torch threads ``set_torch_threads`` gave this process (what ``govern`` lowers under load and raises
    back), else torch's current count: the count a run's CPU timings take when ``cost.threads`` is unset, so
    that they are not timed at whatever count the governor last set (one study's latencies mixed 1- and
    2-thread figures beside a busy process, qa_latency #6)."""
    import torch

    return _governor.max_threads if _governor is not None else torch.get_num_threads()


def govern() -> int | None:
    """Let the process's governor (made by ``set_torch_threads``) adjust torch's threads; loops call this."""
    return _governor.poll() if _governor is not None else None


_turns_held = 0  # this process's open turns (a nested one takes no second lock: it would wait on itself)


class timing_turn:
    """A host-wide turn for timing on the CPU: a timing holds it alone (``exclusive``) while the compute of other
    nasdet processes that take turns (search workers scoring candidates) holds it shared, so no worker times a
    candidate while another one computes on the same cores (with `--workers 2` a measured-latency search timed
    archs at twice their latency, and refused a budget that its smallest arch met). An ``fcntl.flock`` on a file
    in the temp folder, per user: released by the OS when the process dies. Without one (no fcntl, a temp folder
    that cannot be written) there is no turn to take, and timings are as before."""

    def __init__(self, exclusive: bool):
        self.exclusive, self._file = exclusive, None

    def __enter__(self) -> "timing_turn":
        global _turns_held
        _turns_held += 1
        if _turns_held > 1:
            return self
        try:
            import fcntl
            import tempfile

            uid = os.getuid() if hasattr(os, "getuid") else 0
            self._file = open(os.path.join(tempfile.gettempdir(), f"nasdet-timing-{uid}.lock"), "a+")
            fcntl.flock(self._file, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        except (ImportError, OSError):
            if self._file is not None:
                self._file.close()
            self._file = None
        except BaseException:  # a Ctrl-C while waiting (a notebook's interrupt): no turn held, none counted
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        global _turns_held
        _turns_held -= 1
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None


def in_turns(fn, exclusive: bool):
    """``fn`` taking a ``timing_turn`` around each call."""
    def wrapped(*args, **kwargs):
        with timing_turn(exclusive):
            return fn(*args, **kwargs)
    wrapped.__wrapped__ = fn
    for name, value in getattr(fn, "__dict__", {}).items():  # e.g. a lookup table's ``table``
        setattr(wrapped, name, value)
    return wrapped
