"""Cost of running a subnet inside its supernet vs. as the exported static model, in an SSDLite detector.

    python benchmarks/supernet_overhead.py                  # ofa_mbv3
    python benchmarks/supernet_overhead.py mbv2_elastic --input-size 160 --runs 5

For the largest, a middle (each choice's lower median value) and the smallest arch A it reports
time(supernet with A active) / time(exported model of A):
- train: one SGD step (forward + backward + step) at ``--batch`` random images with random boxes.
  Each timed supernet step first has another, freshly sampled arch active and calls ``set_arch(A)``
  inside the timer, as supernet training switches arch every step;
- eval: one forward at batch 1 in eval mode (postprocessing included), A set once.
The exported detector is ``export_detector``: a deep copy with ``backbone.body`` = ``body.export(A)``.
Supernet and export runs alternate so that load from other processes hits both alike; medians of
``--runs`` after ``--warmup``. ``set_arch`` alone is timed over random archs.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from nasdet.config import make_model_config
from nasdet.models import build_detector
from nasdet.models.supernet import BACKBONE_PREFIX, INPUT_SIZE, export_detector, supernet_body
from nasdet.space import prefix_arch


def middle_arch(space) -> dict:
    """Each choice at its lower median value (kernel 5, expand 4 of (3, 4, 6) or 3 of (3, 6), depth 3 of 2..4)."""
    return {n: v[(len(v) - 1) // 2] for n, v in space.choices.items()}


def random_batch(n: int, size: int, num_classes: int, gen: torch.Generator):
    images = [torch.rand(3, size, size, generator=gen) for _ in range(n)]
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        xy = torch.rand(k, 2, generator=gen) * size * 0.6
        wh = (torch.rand(k, 2, generator=gen) * 0.35 + 0.05) * size
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(1, num_classes + 1, (k,), generator=gen)})
    return images, targets


def train_step(model, opt, images, targets) -> None:
    loss = sum(model(images, targets).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbone", nargs="?", default="ofa_mbv3", help="a supernet backbone: ofa_mbv3, mbv2_elastic")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--input-size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16, help="train-step batch size")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--eval-runs", type=int, default=None, help="eval forwards (default: 3 x --runs)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    eval_runs = args.eval_runs or 3 * args.runs

    cfg = make_model_config(detector="ssdlite", backbone={"name": args.backbone, "width_mult": args.width_mult},
                            input_size=args.input_size)
    model = build_detector(cfg, num_classes=args.num_classes)
    body = supernet_body(model)
    space = body.search_space()
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    s = args.input_size
    train_batch = random_batch(args.batch, s, args.num_classes, gen)
    eval_image = [torch.rand(3, s, s, generator=gen)]

    archs = {"largest": space.largest(), "middle": middle_arch(space), "smallest": space.smallest()}
    set_times = []
    for _ in range(50):
        arch = space.sample(rng)
        set_times.append(timed(lambda: body.set_arch(arch)))

    rows = []
    for name, arch in archs.items():
        exported = export_detector(model, {**prefix_arch(arch, BACKBONE_PREFIX), INPUT_SIZE: s})
        # like for like: the export must compute every weight gradient the supernet computes
        assert all(p.requires_grad for p in exported.parameters()), "export has frozen parameters"
        sup_opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        exp_opt = torch.optim.SGD(exported.parameters(), lr=1e-4, momentum=0.9)
        model.train()
        exported.train()
        sup_t, exp_t = [], []
        for i in range(args.warmup + args.runs):
            body.set_arch(space.sample(rng))  # another arch was active, as in supernet training

            def sup_step():
                body.set_arch(arch)
                train_step(model, sup_opt, *train_batch)

            ts = timed(sup_step)
            te = timed(lambda: train_step(exported, exp_opt, *train_batch))
            if i >= args.warmup:
                sup_t.append(ts)
                exp_t.append(te)
        train_sup, train_exp = statistics.median(sup_t), statistics.median(exp_t)

        body.set_arch(arch)
        model.eval()
        exported.eval()
        sup_t, exp_t = [], []
        with torch.no_grad():
            for i in range(args.warmup + eval_runs):
                ts = timed(lambda: model(eval_image))
                te = timed(lambda: exported(eval_image))
                if i >= args.warmup:
                    sup_t.append(ts)
                    exp_t.append(te)
        eval_sup, eval_exp = statistics.median(sup_t), statistics.median(exp_t)
        params = sum(p.numel() for p in exported.backbone.body.parameters())
        rows.append((name, params, train_sup, train_exp, eval_sup, eval_exp))

    print(f"backbone {args.backbone} x{args.width_mult} in SSDLite @ {s}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"train step: batch {args.batch}, median of {args.runs}; eval forward: batch 1, median of {eval_runs}; "
          f"warm-up {args.warmup}")
    print(f"set_arch: median {1e3 * statistics.median(set_times):.3f} ms, max {1e3 * max(set_times):.3f} ms "
          f"(50 random archs, {len(space)} choices)")
    head = (f"{'arch':<9} {'bb params':>10} | {'train super ms':>14} {'train export ms':>15} {'ratio':>6} | "
            f"{'eval super ms':>13} {'eval export ms':>14} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for name, params, ts, te, es, ee in rows:
        print(f"{name:<9} {params / 1e6:>9.2f}M | {1e3 * ts:>14.1f} {1e3 * te:>15.1f} {ts / te:>6.2f} | "
              f"{1e3 * es:>13.2f} {1e3 * ee:>14.2f} {es / ee:>6.2f}")


if __name__ == "__main__":
    main()
