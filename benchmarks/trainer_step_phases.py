"""Where a training step's time goes: the trainer's step against the bare model step, phase by phase.

    python benchmarks/trainer_step_phases.py tune --steps 80
    OMP_WAIT_POLICY=ACTIVE python benchmarks/trainer_step_phases.py tune   # under another OpenMP setting

For a stage of benchmarks/trainer_throughput.py (``baseline``, ``supernet``, ``tune``: the pipeline demo's
models and recipes), both sides take turns step by step in one process (the order alternating, so the
machine's drifting speed hits both alike), on a warm decode cache:
- trainer: ``Trainer.run``'s step: next batch from the loader (augmentation, collate), the thread governor,
  ``train_step`` (to device, forward and backward, the gradient clip, the optimizer and scheduler steps);
- bare: the same step's batch loaded beforehand, to device, forward and backward of the step's subnets,
  the optimizer step (benchmarks/train_throughput.py's step).
Prints milliseconds per step for each phase over the steps after the first 10, and bare / trainer.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=("baseline", "supernet", "tune"))
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    import torch

    import trainer_throughput
    from nasdet.threads import govern
    from nasdet.train import loop as trainer_loop

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(obj, name: str, key: str) -> None:
        inner = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        setattr(obj, name, wrapper)

    warmup, steps = 10, args.steps
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = trainer_throughput.build(args.stage, steps, tmp, [])
        for i in range(len(trainer.train_set)):  # decode every image once: the steady state of later epochs
            trainer.train_set[i]
        batches = trainer_throughput.step_batches(trainer, steps)  # each step's batch, sized as the loader sizes it
        trainer.sampler.set_epoch(0)
        trainer.model.train()
        loader = iter(trainer._loader())
        timed(trainer, "to_device", "trainer: to device")
        timed(trainer, "forward_backward", "trainer: forward + backward")
        timed(trainer_loop, "clip_grad_norm", "trainer: gradient clip")
        timed(trainer.scaler, "step", "trainer: optimizer step")
        timed(trainer.scheduler, "step", "trainer: scheduler step")
        for i in range(steps):
            if i == warmup:
                spent.clear()
            for turn in ("trainer", "bare")[:: 1 if i % 2 == 0 else -1]:
                start = time.perf_counter()
                if turn == "trainer":
                    trainer.step = i  # the supernet draws its subnets (and size) from the step number
                    t = time.perf_counter()
                    (images, targets), loader = trainer_throughput.next_batch(trainer, loader)
                    spent["trainer: next batch (augmentation, collate)"] += time.perf_counter() - t
                    t = time.perf_counter()
                    govern()
                    trainer.before_step(i)
                    spent["trainer: governor, before_step"] += time.perf_counter() - t
                    trainer.train_step(images, targets)
                else:
                    t = time.perf_counter()
                    images, targets = trainer.to_device(*batches[i])
                    trainer.optimizer.zero_grad(set_to_none=True)
                    spent["bare: to device, zero grad"] += time.perf_counter() - t
                    t = time.perf_counter()
                    for arch in trainer.step_archs(i, 0) if args.stage == "supernet" else [None]:
                        if arch is not None:
                            trainer.activate(trainer.model, arch)
                        sum(trainer.model(images, targets).values()).backward()
                    spent["bare: forward + backward"] += time.perf_counter() - t
                    t = time.perf_counter()
                    trainer.optimizer.step()
                    spent["bare: optimizer step"] += time.perf_counter() - t
                spent[f"{turn}: whole step"] += time.perf_counter() - start
    n = steps - warmup
    print(f"{args.stage}, {n} steps after {warmup}, torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for key in sorted(spent):
        print(f"{key:48s} {spent[key] / n * 1e3:8.2f} ms/step")
    print(f"bare / trainer {spent['bare: whole step'] / spent['trainer: whole step']:.3f}")


if __name__ == "__main__":
    main()
