"""torchrun / DistributedDataParallel plumbing: the same script runs on 1 CPU or N GPUs."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import EnvironmentProblem


def check_device_available(device_pref: str, key: str = "train.device") -> None:
    """A device the config names but this machine lacks is one clear error, before anything runs."""
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            instead = "cpu" if key == "cost.device" else "cpu or auto"  # (cost.device takes no auto)
            raise EnvironmentProblem(f"{key} is {device_pref!r} but CUDA is not available on this machine "
                                     f"(torch {torch.__version__}); set {key}: {instead}")
        index = int(device_pref.split(":")[1]) if ":" in device_pref else 0
        if index >= torch.cuda.device_count():
            raise EnvironmentProblem(f"{key} is {device_pref!r} but this machine has {torch.cuda.device_count()} "
                                     "CUDA device(s)")
    elif device_pref == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem(f"{key} is 'mps' but the MPS backend is not available on this machine")


def init_distributed(device_pref: str = "auto") -> tuple[torch.device, int, int]:
    """Join the process group when started by torchrun; return (device, rank, world_size).

    Backend nccl on CUDA, gloo on CPU. Without torchrun's env (WORLD_SIZE) this is a no-op.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_device_available(device_pref)
    want_cuda = device_pref.startswith("cuda") or (device_pref == "auto" and torch.cuda.is_available())
    if want_cuda:
        index = local_rank if world > 1 or ":" not in device_pref else int(device_pref.split(":")[1])
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        _stop_with_launcher()
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def _stop_with_launcher() -> None:
    """Under torchrun, have the kernel stop this rank when the launcher dies (``kill -9`` of torchrun left its
    ranks waiting for its rendezvous store, or training on unseen). Linux only; elsewhere nothing."""
    import signal
    import sys

    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the request: stop now
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def main_console(console):
    """``console`` on the main process, a silent one on the others: a stage's messages once per run, not once
    per torchrun process (call after ``init_distributed``)."""
    if is_main():
        return console
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (e.g. the sampled architecture of a supernet step)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm statistics) on every rank; nothing when not distributed."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return
    for b in model.buffers():
        dist.broadcast(b, src)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()
