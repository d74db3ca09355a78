"""Training step time with OpenMP's ACTIVE vs PASSIVE wait policy, alone and beside a competing process.

    python benchmarks/thread_policy.py --threads 2 --repeats 5 --steps 12

Each measurement is a fresh process (OpenMP reads OMP_WAIT_POLICY once, when it loads) that trains an
SSDLite / MobileNetV3-Small x0.5 at 128 px, batch 8 (random images and boxes) for ``--steps`` steps on
``--threads`` torch threads and reports its median step time. Loaded runs start ``--loads`` competing
processes first (busy loops, one core each, as other jobs on a shared machine) and stop them afterwards.
Prints, per policy and load, the median over repeats of the per-process median step and the min-max.
`nasdet` itself sets PASSIVE at start-up unless OMP_WAIT_POLICY is set (nasdet/threads.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(threads: int, steps: int, warmup: int) -> None:
    import torch

    from nasdet.config import make_model_config
    from nasdet.models import build_detector

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = make_model_config(detector="ssdlite", backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                            input_size=128, extra_channels=[64, 32, 32, 16])
    model = build_detector(cfg, num_classes=8).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = [torch.rand(3, 128, 128) for _ in range(8)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([1 + i % 8])} for i in range(8)]
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": statistics.median(times), "threads": torch.get_num_threads(),
                      "policy": os.environ.get("OMP_WAIT_POLICY")}))


BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


def policy_env(policy: str) -> dict[str, str]:
    """``unset`` (OpenMP's own default), ``PASSIVE``, ``ACTIVE`` or ``ACTIVE:<GOMP_SPINCOUNT>``."""
    if policy == "unset":
        return {}
    name, _, spin = policy.partition(":")
    return {"OMP_WAIT_POLICY": name, **({"GOMP_SPINCOUNT": spin} if spin else {})}


def measure(policy: str, load: int, threads: int, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(policy_env(policy), PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")])))
    loads = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(load)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads), "--steps", str(steps),
                              "--warmup", str(warmup)], env=env, capture_output=True, text=True, check=True)
    finally:
        for p in loads:
            p.kill()
            p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--policies", default="ACTIVE,PASSIVE",
                    help="comma-separated: unset, PASSIVE, ACTIVE or ACTIVE:<GOMP_SPINCOUNT>")
    ap.add_argument("--loads", default="0,1", help="comma-separated numbers of competing busy-loop processes")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.threads, args.steps, args.warmup)
        return
    print(f"cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} at start, "
          f"{args.threads} torch threads, {args.steps} steps per process, {args.repeats} repeats")
    policies, loads = args.policies.split(","), [int(x) for x in args.loads.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for r in range(args.repeats):  # interleaved, so a change in the machine's load hits every variant
        for load in loads:
            for policy in policies:
                m = measure(policy, load, args.threads, args.steps, args.warmup)
                results.setdefault((policy, load), []).append(m["median_s"] * 1000)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print("| policy | competing busy loops | step ms, median of repeats | min-max | repeats |")
    print("|---|---|---|---|---|")
    for (policy, load), ms in sorted(results.items(), key=lambda kv: (kv[0][1], policies.index(kv[0][0]))):
        print(f"| {policy} | {load} | {statistics.median(ms):.0f} | {min(ms):.0f}-{max(ms):.0f} | {len(ms)} |")


if __name__ == "__main__":
    main()
