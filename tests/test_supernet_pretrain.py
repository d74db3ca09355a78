import json
import random

import pytest
import torch

from nasdet.config import ShrinkPhase
from nasdet.models.supernet import build_supernet
from nasdet.stages.pretrain import run_pretrain
from nasdet.models.supernet import export_detector, set_detector_arch
from nasdet.space import ArchError, SearchSpace
from nasdet.train.checkpoint import CheckpointError, load_checkpoint
from nasdet.train.distill import adaptive_distillation_loss
from nasdet.train.supernet import ShrinkingSchedule, middle_arch, sample_step_archs

OFA_TINY = {"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}


def toy_space():
    return SearchSpace({"b.s1.kernel": (3, 5, 7), "b.s1.expand": (3, 4, 6), "b.s1.depth": (2, 3, 4),
                        "b.s2.kernel": (3, 5, 7), "input_size": (64, 96)})


def test_schedule_opens_choices_at_the_right_epochs():
    phases = [ShrinkPhase(epoch=0, open={"kernel": [7], "expand": [6], "depth": [4]}),
              ShrinkPhase(epoch=2, open={"kernel": [5, 7], "expand": [6], "depth": [4]}),
              ShrinkPhase(epoch=4, open={"kernel": [3, 5, 7], "expand": [4, 6], "depth": [4]}),
              ShrinkPhase(epoch=6, open={"expand": [3, 4, 6], "depth": [2, 3, 4]})]
    sched = ShrinkingSchedule(toy_space(), phases)
    assert sched.space_at(0)["b.s1.kernel"] == (7,) and sched.space_at(1)["b.s2.kernel"] == (7,)
    assert sched.space_at(2)["b.s1.kernel"] == (5, 7) and sched.space_at(3)["b.s1.expand"] == (6,)
    assert sched.space_at(4)["b.s1.expand"] == (4, 6) and sched.space_at(5)["b.s1.depth"] == (4,)
    assert sched.space_at(7)["b.s1.depth"] == (2, 3, 4) and sched.space_at(7)["b.s1.kernel"] == (3, 5, 7)
    assert sched.space_at(0)["input_size"] == (64, 96)  # kinds a phase does not name stay open


def test_schedule_rejects_unknown_kind_and_values():
    with pytest.raises(ArchError, match="kernal"):
        ShrinkingSchedule(toy_space(), [ShrinkPhase(epoch=0, open={"kernal": [7]})])
    with pytest.raises(ArchError, match="9"):
        ShrinkingSchedule(toy_space(), [ShrinkPhase(epoch=0, open={"kernel": [9]})])


def test_sampling_rules():
    space, rng = toy_space(), random.Random(0)
    archs = sample_step_archs(space, rng, "sandwich", 2)
    assert archs[0] == space.largest() and archs[1] == space.smallest() and len(archs) == 4
    seen = {tuple(sample_step_archs(space, rng, "uniform")[0].values()) for _ in range(200)}
    assert len(seen) > 50  # uniform, not stuck
    for a in (middle_arch(space), *archs):
        space.validate(a)


def test_adaptive_distillation_loss_zero_iff_same():
    torch.manual_seed(0)
    t = torch.randn(2, 30, 5)
    pos = torch.zeros(2, 30, dtype=torch.bool)
    pos[:, :6] = True
    for adaptive in (True, False):
        same = adaptive_distillation_loss(t.clone(), t, pos, adaptive=adaptive)
        diff = adaptive_distillation_loss(t + torch.randn_like(t), t, pos, adaptive=adaptive)
        assert abs(float(same)) < 1e-5 and float(diff) > 1e-3
    # negatives do not count
    s = t.clone()
    s[:, 10:] += 5.0
    assert abs(float(adaptive_distillation_loss(s, t, pos))) < 1e-5


@pytest.mark.parametrize("detector", ["ssdlite", "retinanet", "fcos"])
def test_losses_with_logits_match_the_detectors_own_training_forward(detector):
    from torchvision.ops import box_iou

    from nasdet.config import make_model_config
    from nasdet.models import build_detector
    from nasdet.train.distill import LossesWithLogits

    torch.manual_seed(0)
    # FCOS: GroupNorm(32) over 32 channels on the 1x1 P7 at 96 px is refused (config error): 64 channels
    neck = {"extra_channels": [32, 16, 16, 16]} if detector == "ssdlite" else \
        {"fpn_channels": 64 if detector == "fcos" else 32}
    model = build_detector(make_model_config(detector=detector, backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                                             input_size=96, **neck), num_classes=3)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 90)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 90.0, 90.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]
    model.train()
    torch.manual_seed(1)
    own = model(images, targets)
    torch.manual_seed(1)
    losses, logits, positives = LossesWithLogits(model)(images, targets)
    assert set(losses) == set(own) and all(torch.allclose(losses[k], own[k]) for k in own)
    assert logits.shape[:2] == positives.shape and logits.shape[-1] in (3, 4)
    assert positives.sum(1).min() > 0  # every image has matched anchors / locations
    assert "compute_loss" not in vars(model.head)  # the FCOS hook is gone afterwards
    if detector == "fcos":  # FCOS positives sit inside their box
        anchors = model.anchor_generator(model.transform(images, targets)[0], list(model.backbone(
            model.transform(images, targets)[0].tensors).values()))
        centres = (anchors[0][positives[0]][:, :2] + anchors[0][positives[0]][:, 2:]) / 2
        boxes = model.transform(images, targets)[1][0]["boxes"]
        inside = box_iou(torch.cat([centres, centres + 1e-3], 1), boxes) > 0
        assert inside.any(1).all()


@pytest.mark.parametrize("detector", ["ssdlite", "retinanet"])
def test_detector_export_equals_supernet(tiny_config, detector):
    cfg = tiny_config(detector, model=OFA_TINY)
    torch.manual_seed(0)
    model, space = build_supernet(cfg, 8)
    assert set(space["input_size"]) == {96}
    model.eval()
    rng = random.Random(1)
    images = [torch.rand(3, 90, 120)]
    for arch in (space.largest(), space.smallest(), space.sample(rng)):
        set_detector_arch(model, arch, space)
        static = export_detector(model, arch, space).eval()
        with torch.no_grad():
            a = model.backbone(model.transform(images)[0].tensors)
            b = static.backbone(static.transform(images)[0].tensors)
        for k in a:
            assert (a[k] - b[k]).abs().max() < 1e-5
        assert not any("Elastic" in type(m).__name__ for m in static.modules())


def test_pretrain_sandwich_distill_multires_then_resume_guard(tiny_config, tmp_path):
    cfg = tiny_config("ssdlite", model=OFA_TINY,
                      train={"epochs": 2, "max_steps": 4, "ckpt_every_steps": 2},
                      supernet={"sampling": "sandwich", "sandwich_random": 1, "input_sizes": [64, 96],
                                "multi_resolution": True, "recalib_batches": 1,
                                "schedule": [{"epoch": 0, "open": {"kernel": [7], "depth": [4]}},
                                             {"epoch": 1, "open": {"kernel": [3, 5, 7], "depth": [3, 4]}}],
                                "distill": {"teacher": "largest", "coef": 0.1}})
    results = run_pretrain(cfg)
    assert set(results) == {"largest", "middle", "smallest"}
    assert results["largest"]["macs"] > results["smallest"]["macs"]
    wd = tmp_path / "work" / "supernet"
    log = [json.loads(x) for x in (wd / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if "loss" in r]
    assert any("s1/distill" in r for r in train_rows) and any("s0/loss" in r for r in train_rows)
    state = load_checkpoint(wd / "ckpt" / "last.pt")
    _, space = build_supernet(cfg, 8)
    assert state["space_id"] == space.space_id and state["step"] == 4
    with pytest.raises(CheckpointError, match="search space"):
        load_checkpoint(wd / "ckpt" / "last.pt", space_id="0123456789abcdef")
    # same work dir, another space (one more resolution): refused, nothing overwritten
    other = cfg.model_copy(update={"supernet": cfg.supernet.model_copy(update={"input_sizes": [64, 96, 128]})})
    with pytest.raises(CheckpointError, match="search space"):
        run_pretrain(other)
    assert load_checkpoint(wd / "ckpt" / "last.pt")["step"] == 4


def test_uniform_step_trains_only_the_sampled_path(tiny_config, tmp_path):
    from nasdet.data.build import build_datasets
    from nasdet.train.supernet import SupernetTrainer

    cfg = tiny_config("ssdlite", model=OFA_TINY, supernet={"sampling": "uniform"})
    data = build_datasets(cfg)
    model, space = build_supernet(cfg, data["train"].num_classes)
    trainer = SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], data["val"], tmp_path / "s")
    # find a step whose arch skips at least one block
    step = next(s for s in range(100) if trainer.step_archs(s, 0)[0]["backbone.stage1.depth"] < 4)
    trainer.step = step
    images, targets = zip(*[data["supernet_train"][i] for i in range(2)])
    from nasdet.data.transforms import targets_to, to_model_input

    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.forward_backward(to_model_input(images, "cpu"), targets_to(targets, "cpu"))
    depth = trainer.last_archs[0]["backbone.stage1.depth"]
    body = model.backbone.body
    skipped = [p for name, p in body.named_parameters() if name.startswith(f"stages.0.blocks.{depth}.")]
    active = [p for name, p in body.named_parameters() if name.startswith("stages.0.blocks.0.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in active)
    assert skipped and all(p.grad is None for p in skipped)


def test_baseline_checkpoint_initialises_the_supernet(tiny_config, tmp_path):
    """ENOT's "start pretrain from your baseline": a `nasdet train` checkpoint of SSDLite on torchvision's
    MobileNetV2 loads into the mbv2_elastic supernet, whose default subnet then gives the same outputs."""
    from nasdet.stages.baseline import run_baseline
    from nasdet.train.supernet import init_from_checkpoint

    base_cfg = tiny_config("ssdlite", model={"backbone": {"name": "mobilenet_v2", "width_mult": 0.35}},
                           train={"epochs": 1, "max_steps": 2})
    run_baseline(base_cfg, tmp_path / "base")
    ckpt = tmp_path / "base" / "baseline" / "ckpt" / "last.pt"
    sup_cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}})
    model, space = build_supernet(sup_cfg, 8)
    init_from_checkpoint(model, str(ckpt))
    set_detector_arch(model, space.default(), space)

    from nasdet.train.trained import load_trained_model

    baseline = load_trained_model(base_cfg, ckpt, 8).eval()
    model.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        a, b = baseline.head(list(baseline.backbone(x).values())), model.head(list(model.backbone(x).values()))
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-4, k

    wrong_cfg = tiny_config("retinanet", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}})
    wrong, _ = build_supernet(wrong_cfg, 8)
    with pytest.raises(CheckpointError, match="missing"):
        init_from_checkpoint(wrong, str(ckpt))


def test_memorised_batch_is_detected_by_recalibrated_subnets(tiny_config, tmp_path):
    """The pretrain evaluation path (set arch, recalibrate BN, eval-mode detection) agrees with training:
    subnets trained in sandwich on a few images detect those images well afterwards; a search's score of a
    subnet (BN recalibrated) differs from its score with the supernet's shared statistics."""
    from conftest import memorise

    from nasdet.data.build import build_datasets
    from nasdet.models.supernet import set_detector_arch
    from nasdet.search.scoring import score_arch
    from nasdet.train.evaluate import evaluate_detector
    from nasdet.train.supernet import SupernetTrainer

    cfg = tiny_config("ssdlite", model=OFA_TINY, data={"augment": {"hflip": 0.0, "photometric": 0.0}},
                      train={"optimizer": {"name": "adamw", "lr": 0.003}, "scheduler": {"name": "constant", "warmup_steps": 0}},
                      supernet={"sampling": "sandwich", "sandwich_random": 0, "recalib_batches": 1,
                                "report_archs": ["largest", "smallest"]},
                      eval={"batch_size": 4})
    torch.manual_seed(0)
    data = build_datasets(cfg)
    few = data["supernet_train"].subset(range(4))
    model, space = build_supernet(cfg, few.num_classes)
    trainer = SupernetTrainer.from_config(cfg, model, space, few, few.with_transforms(None), tmp_path / "s",
                              calib_set=few.with_transforms(None))
    memorise(trainer, few, steps=40)  # 0.91 / 0.54 AP50 after 40 steps (0.65 / 0.58 after 30)
    results = trainer.evaluate()
    assert results["largest"]["metrics"]["AP50"] > 0.5, results
    assert results["smallest"]["metrics"]["AP50"] > 0.3, results
    arch, plain = space.smallest(), few.with_transforms(None)
    set_detector_arch(model, arch, space)
    shared_stats = evaluate_detector(model, plain, torch.device("cpu"), 4)
    recalibrated = score_arch(model, space, arch, plain, plain, "cpu", recalib_batches=1, batch_size=4)
    assert recalibrated["AP"] != shared_stats["AP"]


def test_bn_recalibration_changes_stats_and_is_undone_afterwards(tiny_config):
    from nasdet.data.build import build_datasets
    from nasdet.search.evaluate import preserved_bn_state, recalibrate_bn

    cfg = tiny_config("ssdlite", model=OFA_TINY)
    data = build_datasets(cfg)
    model, space = build_supernet(cfg, data["train"].num_classes)
    set_detector_arch(model, space.smallest(), space)
    model.eval()
    bn = model.backbone.body.stages[0].blocks[0]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    with preserved_bn_state(model):
        seen = recalibrate_bn(model, data["search"].with_transforms(None), torch.device("cpu"), batches=1, batch_size=4)
        changed = [k for k, v in model.state_dict().items() if "running_" in k and not torch.equal(v, buffers[k])]
        assert seen == 4 and len(changed) > 10
        assert not any(m.training for m in model.modules())  # the caller's mode is restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())
    assert bn is model.backbone.body.stages[0].blocks[0]
