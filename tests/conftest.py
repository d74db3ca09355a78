"""Shared fixtures: a tiny synthetic data set (generated once per session) and tiny configs."""
from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores each run trainers of 2 threads (and their subprocesses inherit this): OpenMP's
    # default spin would make 4 spinning threads fight over 2 cores, the collapse benchmarks/README measures.
    # Set before torch loads OpenMP; nasdet keeps a wait policy the user (here the suite) has set.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from nasdet.config import validate_config

# Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread: two workers
# already fill two cores, and more threads than cores spin against each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# Tests compare runs bit for bit (a resumed run against an uninterrupted one); the thread governor makes the
# thread count, and so float reduction order, follow the machine's load. Its own tests turn it back on.
os.environ.setdefault("NASDET_ADAPTIVE_THREADS", "0")

# The files whose tests run longest (whole pipelines, torchrun, ONNX and INT8 exports; `--durations`), first: the
# workers then end on short tests, not one on a 20 s pipeline while the other idles (collection order otherwise)
HEAVY_FIRST = ("test_tune_export_pipeline.py", "test_fad.py", "test_cli.py", "test_int8.py", "test_fault_injection.py",
               "test_gradient_search.py", "test_interrupt.py", "test_report_controls.py",
               "test_search_latency_workers.py", "test_supernet_pretrain.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    from nasdet.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("shapes")
    make_synthetic(out, n_train=24, n_val=8, size=96, seed=0, workers=1)
    return out


def tiny_family_keys(detector: str) -> dict:
    """Small neck widths; each family takes only its own keys (model config union)."""
    if detector in ("ssd", "ssdlite"):
        return {"extra_channels": [64, 32, 32, 16]}
    if detector == "yolov3":
        return {"neck_channels": [32, 24, 16], "head_channels": [32, 24, 16]}
    return {"fpn_channels": 64}


def tiny_raw(shapes_dir, work_dir, detector="ssdlite") -> dict:
    """A config small enough for a training step in well under a second on 2 cores."""
    return {
        "name": "tiny", "work_dir": str(work_dir), "seed": 0,
        "data": {"format": "coco",
                 "train": {"annotations": str(shapes_dir / "train" / "annotations.json"), "images": str(shapes_dir / "train" / "images")},
                 "val": {"annotations": str(shapes_dir / "val" / "annotations.json"), "images": str(shapes_dir / "val" / "images")},
                 "search_fraction": 0.25, "num_workers": 0},
        "model": {"detector": detector, "backbone": {"name": "mobilenet_v3_small", "width_mult": 0.5},
                  "input_size": 96, **tiny_family_keys(detector)},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
                  "scheduler": {"name": "cosine", "warmup_steps": 2}, "ckpt_every_steps": 2, "log_every_steps": 1},
        "eval": {"batch_size": 8},
        "cost": {"warmup": 1, "runs": 2, "threads": 1},
    }


@pytest.fixture
def tiny_config(shapes_dir, tmp_path):
    def make(detector="ssdlite", **sections):
        raw = tiny_raw(shapes_dir, tmp_path / "work", detector)
        for section, values in sections.items():
            if isinstance(values, dict):
                raw.setdefault(section, {}).update(values)
            else:
                raw[section] = values
        return validate_config(raw, "tiny")

    return make


def randomize(net, seed: int = 0):
    """Non-trivial BN stats, affine params and kernel transforms, so supernet/export parity checks see
    every slice."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def memorise(trainer, dataset, steps: int = 80, n: int = 4) -> None:
    """Train a SupernetTrainer's model on the first ``n`` images of ``dataset``, one batch, ``steps`` times
    (so that subnets should then detect exactly those images)."""
    from nasdet.data.transforms import targets_to, to_model_input

    images, targets = zip(*[dataset[i] for i in range(n)])
    images, targets = to_model_input(images, "cpu"), targets_to(targets, "cpu")
    for step in range(steps):
        trainer.step = step
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.forward_backward(images, targets)
        trainer.optimizer.step()


def fake_pretrain(cfg, num_classes: int = 8):
    """A supernet checkpoint where ``run_pretrain`` writes it (random weights: fast). Returns (model, space)."""
    from pathlib import Path

    from nasdet.config import config_to_dict
    from nasdet.models.supernet import build_supernet
    from nasdet.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model, space = build_supernet(cfg, num_classes)
    save_checkpoint({"model": model.state_dict(), "space_id": space.space_id, "config": config_to_dict(cfg), "step": 0},
                    Path(cfg.work_dir) / "supernet" / "ckpt" / "last.pt")
    return model, space
