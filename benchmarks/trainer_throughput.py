"""The trainer's images/s against its model's bare step, per thread policy, idle and beside busy loops.

    python benchmarks/trainer_throughput.py --steps 60 --repeats 2   # idle and under load, per policy
    python benchmarks/trainer_throughput.py --interleaved --steps 120 --repeats 3 --loads 0 --policies nasdet
        # the trainer / bare ratio idle, the two taking turns (the steady figure: see ``--interleaved``)

For the pipeline demo's baseline (torchvision MobileNetV2 x0.5 SSDLite at 160 px, batch 8), its
supernet (mbv2_elastic, uniform sampling at 128/160 px, batch 16) and its tune stage (``tune``: the
static subnet of a mid-sized arch of the space at 128 px, about the demo's found one, with the baseline's
recipe; weights from init, which does not change the speed), each measurement is a fresh process
(OpenMP reads its wait policy once, when it loads):
- ``trainer``: ``Trainer.run`` / ``SupernetTrainer.run`` / ``TuneTrainer.run`` as the stages run it (data loading with the config's
  workers, augmentation, logging, a checkpoint at the end), images/s over the steps after the first
  ``log_every`` (from the trainer's own log records);
- ``bare``: the same model, optimizer and sampled subnets on batches loaded beforehand: forward,
  backward, optimizer step and nothing else (benchmarks/train_throughput.py's step); ``--bare-clip``: with the
  recipe's gradient clip (``train.grad_clip``) too, which the trainer does every step.
- ``--interleaved``: both in one process, taking turns step by step (the order alternating): the trainer's
  side is ``Trainer.run``'s step (next batch from the loader, the thread governor, ``train_step``; not the
  progress line and log record, a few microseconds), the bare side the step above on the same step's images
  loaded beforehand. The machine's speed here drifts by 10-20 % within minutes, which separate processes
  see as noise in the ratio; taking turns cancels it.
The training images are decoded into the trainer's cache (``data.cache_mb``) before the run: the steady
state of every epoch after the first, which a 60-step run would otherwise never reach (``--cold``: the
first epoch, each image decoded as it is drawn).
Policies: ``nasdet`` (today's: OpenMP's default wait policy, threads follow the free cores) and
``passive`` (the previous default: ``OMP_WAIT_POLICY=PASSIVE``, a fixed count). Loads: numbers of
competing one-core busy loops started before the measured process.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/demo/pipeline_shapes.yaml")
POLICIES = {"nasdet": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE", "NASDET_ADAPTIVE_THREADS": "0"}}
BUSY_LOOP = "import time\nend = time.time() + 900\nwhile time.time() < end:\n    pass\n"


def build(stage: str, steps: int, out_dir: str, overrides: list[str]):
    from nasdet.config import load_config
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.models.supernet import build_supernet
    from nasdet.stages.common import baseline_config, with_train_recipe
    from nasdet.train.loop import Trainer
    from nasdet.train.supernet import SupernetTrainer

    cfg = load_config(CONFIG, [f"train.max_steps={steps}", "train.ckpt_every_steps=100000", "eval.max_images=8",
                               f"supernet.train.max_steps={steps}", "supernet.train.ckpt_every_steps=100000",
                               "supernet.report_archs=[]", *overrides])
    if stage == "tune":
        from nasdet.train.trained import TuneTrainer, build_tuned_model, with_backbone_checkpoint

        tcfg = with_train_recipe(cfg, cfg.tune.train)
        data = build_datasets(tcfg)
        k = data["train"].num_classes
        _, space = build_supernet(with_backbone_checkpoint(cfg, None), k)
        # every choice at its middle value: kernel 5, expand 3 or 6 (2 choices: the first), mid depths
        arch = {name: values[(len(values) - 1) // 2] for name, values in space.choices.items()}
        arch["input_size"] = 128
        model = build_tuned_model(cfg, k, space.validate(arch), None)
        return TuneTrainer.from_config(tcfg, model, data["train"], None, out_dir, arch=arch), cfg
    if stage == "baseline":
        cfg = baseline_config(cfg)
        data = build_datasets(cfg)
        model = build_detector(cfg.model, num_classes=data["train"].num_classes)
        return Trainer.from_config(cfg, model, data["train"], None, out_dir), cfg
    cfg = with_train_recipe(cfg, cfg.supernet.train)
    data = build_datasets(cfg)
    model, space = build_supernet(cfg, data["train"].num_classes)
    return SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], None, out_dir,
                                       calib_set=data["supernet_train"].with_transforms(None)), cfg


def bare_step(trainer, stage: str, i: int, images, targets, clip: bool = False) -> None:
    """Forward, backward and optimizer step of step ``i``'s subnets, and nothing else (``clip``: also the
    recipe's gradient clip, as the trainer clips)."""
    images, targets = trainer.to_device(images, targets)
    trainer.optimizer.zero_grad(set_to_none=True)
    archs = trainer.step_archs(i, 0) if stage == "supernet" else [None]
    for arch in archs:
        if arch is not None:
            trainer.activate(trainer.model, arch)
        loss = sum(trainer.model(images, targets).values())
        loss.backward()
    if clip and trainer.tcfg.grad_clip:
        from nasdet.train.optim import clip_grad_norm

        clip_grad_norm(trainer.params, trainer.tcfg.grad_clip)
    trainer.optimizer.step()


def step_batches(trainer, steps: int) -> list:
    """The batches the run's first ``steps`` steps get, loaded beforehand (more steps than an epoch has: the next
    epoch's; a multi-resolution supernet's loader sizes each for its step); leaves the trainer at step 0."""
    batches = []
    while len(batches) < steps:
        trainer.step, trainer.epoch = len(batches), len(batches) // trainer.steps_per_epoch
        trainer.sampler.set_epoch(trainer.epoch)
        batches += list(itertools.islice(trainer._loader(), steps - len(batches)))
    trainer.step, trainer.epoch = 0, 0
    return batches


def next_batch(trainer, loader):
    """The trainer's next batch from ``loader``, starting the next epoch's loader at the end of one, as
    ``Trainer.run`` does; returns the batch and the loader to go on with."""
    try:
        return next(loader), loader
    except StopIteration:
        trainer.epoch += 1
        trainer.sampler.set_epoch(trainer.epoch)
        loader = iter(trainer._loader())
        return next(loader), loader


def child(stage: str, mode: str, steps: int, overrides: list[str], cold: bool, clip: bool = False) -> None:
    import torch

    from nasdet.threads import govern

    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = build(stage, steps, tmp, overrides)
        bs, every = trainer.tcfg.batch_size, trainer.tcfg.log_every_steps
        if mode in ("trainer", "interleaved") and not cold:
            for i in range(len(trainer.train_set)):  # what the first epoch leaves in the decode cache
                trainer.train_set[i]  # (the run seeds its own random draws)
        batches = []
        if mode in ("bare", "interleaved"):
            batches = step_batches(trainer, steps)
        out = {}
        if mode == "trainer":
            trainer.run()
            with open(os.path.join(tmp, "log.jsonl")) as f:
                records = [r for r in map(json.loads, f) if "img_per_s" in r][1:]
            out["ips"] = len(records) / sum(1 / r["img_per_s"] for r in records)  # equal images per record
        elif mode == "bare":
            trainer.model.train()
            times = []
            for i, (images, targets) in enumerate(batches):
                t = time.perf_counter()
                bare_step(trainer, stage, i, images, targets, clip)
                if i >= every:
                    times.append(time.perf_counter() - t)
            out["ips"] = bs * len(times) / sum(times)
        else:  # interleaved: Trainer.run's step (loader, thread governor, train_step) and the bare step take
            # turns, step by step, on the same images (the bare step's loaded beforehand), in one process: a
            # machine whose speed drifts within minutes slows both alike
            trainer.model.train()
            trainer.sampler.set_epoch(0)
            loader = iter(trainer._loader())
            spent = {"trainer": 0.0, "bare": 0.0}
            for i in range(steps):
                for turn in ("trainer", "bare")[:: 1 if i % 2 == 0 else -1]:
                    t = time.perf_counter()
                    if turn == "trainer":
                        trainer.step = i  # the supernet's step draws its subnets (and size) from the step number
                        (images, targets), loader = next_batch(trainer, loader)
                        govern()
                        trainer.before_step(i)
                        trainer.train_step(images, targets)
                    else:
                        bare_step(trainer, stage, i, *batches[i], clip=clip)
                    if i >= every:
                        spent[turn] += time.perf_counter() - t
            out = {f"{k}_ips": bs * (steps - every) / v for k, v in spent.items()}
    print(json.dumps({**out, "threads": torch.get_num_threads()}))


def measure(stage: str, mode: str, policy: str, load: int, steps: int, overrides: list[str], cold: bool,
            bare_clip: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                              "NASDET_ADAPTIVE_THREADS")}
    env.update(POLICIES[policy], PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    loads = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(load)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", stage, mode, "--steps", str(steps),
                              *[a for o in overrides for a in ("--set", o)], *(["--cold"] if cold else []),
                              *(["--bare-clip"] if bare_clip else [])], env=env,
                             capture_output=True, text=True, cwd=ROOT)
    finally:
        for p in loads:
            p.kill()
            p.wait()
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stages", default="baseline,supernet,tune")
    ap.add_argument("--policies", default="nasdet,passive")
    ap.add_argument("--loads", default="0,1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both modes, e.g. data.num_workers=0")
    ap.add_argument("--cold", action="store_true", help="decode images as they are drawn (a first epoch)")
    ap.add_argument("--bare-clip", action="store_true",
                    help="the bare step also clips the gradients as the recipe says (train.grad_clip)")
    ap.add_argument("--interleaved", action="store_true",
                    help="one process per pair, the trainer's step and the bare step taking turns step by step")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.steps, args.set, args.cold, args.bare_clip)
        return
    stages, policies = args.stages.split(","), args.policies.split(",")
    loads = [int(x) for x in args.loads.split(",")]
    print(f"cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} at start, "
          f"{args.steps} steps, {args.repeats} repeats, {'cold' if args.cold else 'warm'} decode cache, {'bare step clips, ' if args.bare_clip else ''}{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    res: dict[tuple, list[float]] = {}
    for repeat in range(args.repeats):  # interleaved, so a change in the machine's load hits every variant
        for stage in stages:
            for load in loads:
                for policy in policies:
                    # a trainer run and a bare run back to back make a pair; the order alternates between
                    # repeats, so a machine getting faster or slower does not favour either
                    if args.interleaved:
                        got = measure(stage, "interleaved", policy, load, args.steps, args.set, args.cold, args.bare_clip)
                        for mode in ("trainer", "bare"):
                            res.setdefault((stage, load, policy, mode), []).append(got[f"{mode}_ips"])
                        continue
                    for mode in ("trainer", "bare")[:: 1 if repeat % 2 == 0 else -1]:
                        res.setdefault((stage, load, policy, mode), []).append(
                            measure(stage, mode, policy, load, args.steps, args.set, args.cold, args.bare_clip)["ips"])
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print("| stage | busy loops | policy | trainer img/s | bare step img/s | trainer / bare | per pair: median (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for stage in stages:
        for load in loads:
            for policy in policies:
                runs = [res[(stage, load, policy, m)] for m in ("trainer", "bare")]
                t, b = (statistics.median(r) for r in runs)
                pairs = [a / c for a, c in zip(*runs)]
                print(f"| {stage} | {load} | {policy} | {t:.1f} | {b:.1f} | {t / b:.2f} | "
                      f"{statistics.median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f}) |")


if __name__ == "__main__":
    main()
