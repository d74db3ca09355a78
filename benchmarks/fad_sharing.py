"""FAD representation sharing: one search cell with shared vs separate ops, forward + backward.

One ``SearchCell`` (256-channel inputs, C = 96, 3 nodes, 9 mixed edges), input 2x256x52x52 as both
cell inputs (the box tower's case), loss = mean of the output, gradients to the weights and the alphas.
Variants:
  shared            nasdet's ops: one trunk per conv kind + dilated branches, FAD's decouple 1x1s
  shared-nodecouple the same without the decouple 1x1s
  fad-style         shared ops computed the way FAD's released code does (out-of-place ReLU, the
                    'none' op computed as x * 0 and summed, mul + add per op)
  separate          the ten ops as separate stacks (no sharing; the same search space)
Each variant runs in its own process. Prints the median step time, the peak memory of the steps (CPU:
peak RSS minus RSS before the first step; CUDA: max_memory_allocated), the bytes autograd saves for
backward, and the ratios separate / shared.

    python benchmarks/fad_sharing.py [--device cpu|cuda] [--threads 2] [--runs 5] [--warmup 2] [--size 52]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from nasdet.models.heads.fad import ALPHA_COLUMNS, MixedOp, SearchCell


class FADStyleMixedOp(MixedOp):
    """FAD's ``MixedOp.forward``: every op, ``none`` included (x * 0), weighted with ``w * y`` and added."""

    def forward(self, x, weights):
        res = None
        ys = [*self.candidates(x), x * 0.0]
        for w, y in zip(weights, ys):
            res = w * y if res is None else res + w * y
        return res


def build_cell(variant: str) -> SearchCell:
    shared = variant != "separate"
    cell = SearchCell(256, 256, 256, 96, num_nodes=3, shared=shared, decouple=variant in ("shared", "fad-style"))
    if variant == "fad-style":
        for m in cell.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
            if isinstance(m, MixedOp):
                m.__class__ = FADStyleMixedOp
    return cell


def step(cell: SearchCell, x: torch.Tensor, alphas: list[torch.Tensor]) -> None:
    weights = [a.softmax(-1) for a in alphas]
    cell(x, x, weights).mean().backward()
    cell.zero_grad(set_to_none=True)
    for a in alphas:
        a.grad = None


def saved_bytes(cell, x, alphas) -> int:
    """Bytes autograd keeps for backward (distinct storages): the activation memory of a step."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = cell(x, x, [a.softmax(-1) for a in alphas]).mean()
    out.backward()
    cell.zero_grad(set_to_none=True)
    return sum(seen.values())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(variant: str, device: torch.device, runs: int, warmup: int, size: int = 52) -> dict:
    """Run in a fresh process per variant: peak RSS during the steps minus RSS before them (CPU; glibc
    told to return large blocks at once, so RSS follows live memory), or max_memory_allocated (CUDA)."""
    torch.manual_seed(0)
    cell = build_cell(variant).to(device).train()
    alphas = [(1e-3 * torch.randn(i + 2, len(ALPHA_COLUMNS), device=device)).requires_grad_(True) for i in range(3)]
    x = torch.randn(2, 256, size, size, device=device)
    base = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(cell, x, alphas)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "peak_mb": peak / 2**20, "saved_mb": saved_bytes(cell, x, alphas) / 2**20,
            "params_m": sum(p.numel() for p in cell.parameters()) / 1e6}


def run_isolated(variant: str, args) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [sys.executable, __file__, "--one", variant, "--device", args.device, "--threads", str(args.threads),
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--size", str(args.size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["shared", "shared-nodecouple", "fad-style", "separate"])
    ap.add_argument("--size", type=int, default=52, help="input side (smoke tests: smaller)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure(args.one, device, args.runs, args.warmup, args.size)))
        return
    print(f"one FAD search cell, input 2x256x{args.size}x{args.size}, C=96, 3 nodes, forward+backward; {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.runs}")
    rows = {v: run_isolated(v, args) for v in args.variants}
    print(f"{'variant':<18} {'ms/step':>9} {'min ms':>9} {'peak MiB':>9} {'saved MiB':>10} {'params M':>9}")
    for r in rows.values():
        print(f"{r['variant']:<18} {r['ms']:9.1f} {r['min_ms']:9.1f} {r['peak_mb']:9.1f} {r['saved_mb']:10.1f} "
              f"{r['params_m']:9.3f}")
    if "separate" in rows:
        sep = rows["separate"]
        for v, r in rows.items():
            if v != "separate":
                print(f"separate / {v}: time {sep['ms'] / r['ms']:.2f}x, peak memory {sep['peak_mb'] / r['peak_mb']:.2f}x, "
                      f"saved activations {sep['saved_mb'] / r['saved_mb']:.2f}x")
    if "fad-style" in rows and "shared" in rows:
        print(f"shared / fad-style step time: {rows['shared']['ms'] / rows['fad-style']['ms']:.2f} "
              f"(<= 1: no slower than FAD's way of computing the same cell)")


if __name__ == "__main__":
    main()
