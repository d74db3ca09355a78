"""CPU thread policy: OpenMP threads that sleep when idle, and thread counts that fit the cores.

libgomp (torch's OpenMP on Linux) lets idle threads spin for a while before sleeping. On a machine
whose cores are shared (other processes, DataLoader workers, search workers, torchrun ranks) the
spinning threads take the cores the working ones need: a training step on 2 threads of a loaded
2-core machine was 10-20x slower (benchmarks/thread_policy.py). OpenMP reads ``OMP_WAIT_POLICY``
once, when the library loads, so ``passive_wait_policy`` must run before torch is imported.
"""
from __future__ import annotations

import os

# set by `nasdet search --workers N` (and read like torchrun's LOCAL_WORLD_SIZE): processes sharing this host
LOCAL_PROCESSES_ENV = "NASDET_LOCAL_PROCESSES"


def passive_wait_policy(environ: dict | None = None) -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; True if it was set here.
    Must run before torch (and so OpenMP) is loaded to have any effect."""
    env = os.environ if environ is None else environ
    if env.get("OMP_WAIT_POLICY"):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


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
    """Apply ``thread_count`` to torch (intra-op threads); returns the count."""
    import torch

    n = thread_count(requested, processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
