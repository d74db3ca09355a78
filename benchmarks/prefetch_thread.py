"""Would a thread that loads the next batch while the step runs close the trainer / bare gap (issue 27)?

    python benchmarks/prefetch_thread.py tune --steps 80 --worker-threads 1

For a stage of benchmarks/trainer_throughput.py (the pipeline demo's models and recipes), three steps take turns
each step (the order reversed every other step), on a warm decode cache: ``bare`` (the step's batch loaded
beforehand, benchmarks/train_throughput.py's step), ``serial`` (the next batch from the loader, then the step:
what the trainer does) and ``thread`` (the same, the next batch loaded by a background thread during the step,
that thread at ``--worker-threads`` torch threads). Prints milliseconds per step over the steps after the first 10
and bare / serial, bare / thread.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=("baseline", "supernet", "tune"))
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--worker-threads", type=int, default=1, help="torch threads of the loading thread (0: torch's)")
    args = ap.parse_args()
    import torch

    import trainer_throughput as tt

    warmup = 10
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = tt.build(args.stage, args.steps * 3, tmp, [])
        for i in range(len(trainer.train_set)):  # decode every image once: the steady state of later epochs
            trainer.train_set[i]
        batches = tt.step_batches(trainer, args.steps)
        trainer.sampler.set_epoch(0)
        trainer.model.train()

        def cycle():
            while True:
                yield from trainer._loader()

        serial_loader, thread_loader = cycle(), cycle()
        requests, ready = queue.Queue(), queue.Queue()

        def loading_thread():
            if args.worker_threads:
                torch.set_num_threads(args.worker_threads)
            while (loader := requests.get()) is not None:
                ready.put(next(loader))

        worker = threading.Thread(target=loading_thread, daemon=True)
        worker.start()
        requests.put(thread_loader)  # the first batch
        spent = {"bare": 0.0, "serial": 0.0, "thread": 0.0}
        for i in range(args.steps):
            for turn in ("bare", "serial", "thread")[:: 1 if i % 2 == 0 else -1]:
                t = time.perf_counter()
                if turn == "bare":
                    tt.bare_step(trainer, args.stage, i, *batches[i])
                elif turn == "serial":
                    tt.bare_step(trainer, args.stage, i, *next(serial_loader))
                else:
                    images, targets = ready.get()
                    requests.put(thread_loader)  # the next one, loaded during this step
                    tt.bare_step(trainer, args.stage, i, images, targets)
                if i >= warmup:
                    spent[turn] += time.perf_counter() - t
        requests.put(None)
    n = args.steps - warmup
    print(f"{args.stage}, {n} steps after {warmup}, main torch threads {torch.get_num_threads()}, loading thread "
          f"{args.worker_threads or 'torch default'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for k, v in spent.items():
        print(f"{k:8s} {v / n * 1e3:8.2f} ms/step")
    print(f"bare / serial {spent['bare'] / spent['serial']:.3f}, bare / thread {spent['bare'] / spent['thread']:.3f}")


if __name__ == "__main__":
    main()
