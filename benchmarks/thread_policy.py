"""Training step time with OpenMP's ACTIVE vs PASSIVE wait policy, alone and beside a competing process.

    python benchmarks/thread_policy.py --threads 2 --repeats 5 --steps 12

Each measurement is a fresh process (OpenMP reads OMP_WAIT_POLICY once, when it loads) that trains an
SSDLite / MobileNetV3-Small x0.5 at 128 px, batch 8 (random images and boxes) for ``--steps`` steps on
``--threads`` torch threads and reports its median step time. "loaded" runs start a competing process
first (a busy loop on one core, as another job on a shared machine) and stop it afterwards. Prints,
per policy and load, the median over repeats of the per-process median step and the min-max spread.
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


def measure(policy: str, loaded: bool, threads: int, steps: int, warmup: int) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")])))
    env.pop("OMP_NUM_THREADS", None)  # the child sets its thread count itself
    load = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if loaded else None
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads), "--steps", str(steps),
                              "--warmup", str(warmup)], env=env, capture_output=True, text=True, check=True)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.threads, args.steps, args.warmup)
        return
    print(f"cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} at start, "
          f"{args.threads} torch threads, {args.steps} steps per process, {args.repeats} repeats")
    results: dict[tuple[str, bool], list[float]] = {}
    for r in range(args.repeats):  # interleaved, so a change in the machine's load hits every variant
        for loaded in (False, True):
            for policy in ("ACTIVE", "PASSIVE"):
                m = measure(policy, loaded, args.threads, args.steps, args.warmup)
                results.setdefault((policy, loaded), []).append(m["median_s"] * 1000)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print("| policy | competing process | step ms, median of repeats | min-max | repeats |")
    print("|---|---|---|---|---|")
    for (policy, loaded), ms in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {policy} | {'busy loop on 1 core' if loaded else 'none'} | {statistics.median(ms):.0f} | "
              f"{min(ms):.0f}-{max(ms):.0f} | {len(ms)} |")
    for loaded in (False, True):
        a, p = statistics.median(results[("ACTIVE", loaded)]), statistics.median(results[("PASSIVE", loaded)])
        print(f"ACTIVE / PASSIVE, {'loaded' if loaded else 'alone'}: {a / p:.2f}")


if __name__ == "__main__":
    main()
