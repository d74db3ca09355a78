import json
import random

import pytest
import torch

from nasdet.config import ShrinkPhase
from nasdet.models.supernet import build_supernet
from nasdet.stages.pretrain import run_pretrain
from nasdet.models.supernet import export_detector, set_detector_arch
from nasdet.space import ArchError, SearchSpace
from nasdet.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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
    # OFA's recipe trains several uniform subnets per step, more as the phases open more (dynamic_batch_size 1, 2, 4);
    # one subnet draws as before
    assert sample_step_archs(space, random.Random(5), "uniform") == sample_step_archs(space, random.Random(5), "uniform", 2, 3)[:1]
    assert len(sample_step_archs(space, rng, "uniform", n_uniform=4)) == 4


def test_uniform_subnets_per_step_follow_the_phase(tiny_config, tmp_path):
    """supernet.uniform_samples, and each schedule phase's samples (OFA: 1 subnet a step for the kernel, 2 for depth,
    4 for expand), set how many uniform subnets a step trains."""
    from nasdet.data.build import build_datasets
    from nasdet.train.supernet import SupernetTrainer

    cfg = tiny_config("ssdlite", model=OFA_TINY, train={"epochs": 3},
                      supernet={"uniform_samples": 2, "schedule": [
                          {"epoch": 0, "open": {"kernel": [7]}},  # the default: uniform_samples
                          {"epoch": 1, "open": {"kernel": [3, 5, 7]}, "samples": 1},
                          {"epoch": 2, "open": {}, "samples": 4}]})
    data = build_datasets(cfg)
    model, space = build_supernet(cfg, data["train"].num_classes)
    trainer = SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], data["val"], tmp_path / "s")
    assert [len(trainer.step_archs(7, epoch)) for epoch in (0, 1, 2)] == [2, 1, 4]


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


def test_pretrain_sandwich_distill_multires_then_resume_guard(tiny_config, tmp_path, capsys):
    cfg = tiny_config("ssdlite", model=OFA_TINY,
                      train={"epochs": 2, "max_steps": 4, "ckpt_every_steps": 2},
                      supernet={"sampling": "sandwich", "sandwich_random": 1, "input_sizes": [64, 96],
                                "multi_resolution": True, "recalib_batches": 1,
                                "schedule": [{"epoch": 0, "open": {"kernel": [7], "depth": [4]}},
                                             {"epoch": 1, "open": {"kernel": [3, 5, 7], "depth": [3, 4]}}],
                                "distill": {"teacher": "largest", "coef": 0.1}})
    results = run_pretrain(cfg)
    # a quick run's max_steps ends in the first phase: said (the phase at epoch 1 is never trained here)
    assert "warning: train.max_steps 4 stops before the schedule's phase at epoch 1" in " ".join(capsys.readouterr().out.split())
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
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in buffers.items())
    assert bn is model.backbone.body.stages[0].blocks[0]


def _ssdlite_checkpoint(tiny_config, path, class_names, seed=0):
    """A `nasdet train`-like checkpoint of SSDLite on torchvision's MobileNetV2 (random weights) recording
    ``class_names`` (None: recording none, as older checkpoints); returns its detector."""
    from nasdet.config import config_to_dict
    from nasdet.models import build_detector
    from nasdet.train.checkpoint import save_checkpoint

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mobilenet_v2", "width_mult": 0.35}})
    torch.manual_seed(seed)
    detector = build_detector(cfg.model, num_classes=len(class_names or ["a", "b", "c", "d"]))
    state = {"model": detector.state_dict(), "config": config_to_dict(cfg), "step": 2}
    if class_names is not None:
        state["classes"] = [[i + 1, n] for i, n in enumerate(class_names)]
    save_checkpoint(state, path)
    return detector


def test_init_from_picks_each_class_its_own_rows_by_the_checkpoints_recorded_classes(tiny_config, tmp_path):
    """supernet.init_from copied class rows by index, though the checkpoint records its classes: a permutation
    started the supernet calling circles squares; another class count was a key-list error without the key."""
    from nasdet.models.imports import class_layer_keys, pick_label_rows
    from nasdet.train.supernet import init_from_checkpoint

    names = ["a", "b", "c", "d"]
    ckpt = tmp_path / "base.pt"
    base = _ssdlite_checkpoint(tiny_config, ckpt, names).state_dict()
    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}})

    def started(classes):
        torch.manual_seed(1)
        model, _ = build_supernet(cfg, len(classes))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        start = init_from_checkpoint(model, str(ckpt), classes, cfg.model)
        return start, model.state_dict(), before, class_layer_keys(model, before)

    for classes in (["b", "a", "c", "d"], ["d", "b"]):  # a permutation, a subset: each class its own rows
        start, state, _, keys = started(classes)
        assert start.picked_classes and not start.reinitialised and keys
        labels = [0, *(1 + names.index(n) for n in classes)]  # background first
        for k in keys:
            assert torch.equal(state[k], pick_label_rows(base[k], 0, len(names) + 1, labels)), k
    start, state, before, keys = started(["x", "b", "c", "d"])  # other names, same count: afresh, said
    assert start.reinitialised == keys and not start.picked_classes
    assert all(torch.equal(state[k], before[k]) for k in keys)
    assert torch.equal(state["head.regression_head.module_list.0.1.weight"],
                       base["head.regression_head.module_list.0.1.weight"])
    unnamed = tmp_path / "unnamed.pt"
    base = _ssdlite_checkpoint(tiny_config, unnamed, None).state_dict()
    torch.manual_seed(1)
    model, _ = build_supernet(cfg, 4)
    start = init_from_checkpoint(model, str(unnamed), ["x", "b", "c", "d"], cfg.model)
    after = model.state_dict()
    assert start.unnamed_classes and all(torch.equal(after[k], base[k]) for k in keys)


def test_init_from_errors_name_the_key_and_what_the_file_is(tiny_config, tmp_path):
    import torchvision

    from nasdet.train.supernet import init_from_checkpoint

    cfg = tiny_config("retinanet", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}})
    model, _ = build_supernet(cfg, 4)
    imagenet = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), imagenet)
    with pytest.raises(CheckpointError, match=r"supernet.init_from .*mobilenet_v2-b0353104.pth is a plain state_dict "
                                              r"of a classification network.*model.backbone.checkpoint"):
        init_from_checkpoint(model, str(imagenet), ["a", "b", "c", "d"], cfg.model)
    # an MMDetection file (its own format, and mmdetection-enot's {"epoch", "model"}): imported as the baseline first
    mmdet = {"backbone.layer1.0.depthwise_conv.conv.weight": torch.zeros(1), "bbox_head.cls_convs.0.0.bn.weight":
             torch.zeros(1), "neck.extra_layers.0.1.conv.weight": torch.zeros(1)}
    for name, saved in (("mmdet.pth", {"meta": {}, "state_dict": mmdet}), ("enot.pth", {"epoch": 99, "model": mmdet})):
        torch.save(saved, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"supernet.init_from .*{name} is an MMDetection ssd_mnv2 of ENOT .*"
                                                  r"pipeline.baseline_checkpoint"):
            init_from_checkpoint(model, str(tmp_path / name), ["a", "b", "c", "d"], cfg.model)
    detector = tmp_path / "ssdlite.pt"
    _ssdlite_checkpoint(tiny_config, detector, ["a", "b", "c", "d"])
    with pytest.raises(CheckpointError, match=r"supernet.init_from .*ssdlite.pt does not fit this supernet outside the "
                                              r"backbone: it holds ssdlite on mobilenet_v2 \(its stored config\), this "
                                              r"config builds retinanet on mbv2_elastic"):
        init_from_checkpoint(model, str(detector), ["a", "b", "c", "d"], cfg.model)
    # the standard network into its supernet at another width: the width is what differs, said so
    wider = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.5}})
    with pytest.raises(CheckpointError, match=r"this config builds ssdlite on mbv2_elastic \(model.backbone."
                                              r"width_mult 0.35 -> 0.5\)"):
        init_from_checkpoint(build_supernet(wider, 4)[0], str(detector), ["a", "b", "c", "d"], wider.model)
    # other default boxes: the same tensors, other boxes decoded (qa_recipes #5)
    other_boxes = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35},
                                                "anchor_ratio_range": [0.1, 0.9]})
    with pytest.raises(CheckpointError, match=r"ssdlite.pt was trained with other anchors \(model.anchor_ratio_range"):
        init_from_checkpoint(build_supernet(other_boxes, 4)[0], str(detector), ["a", "b", "c", "d"], other_boxes.model)
    # a start still training (ENOT's multi-resolution step from the single-resolution supernet): said so
    fits = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}})
    save_checkpoint({**load_checkpoint(detector), "total_steps": 10}, detector)
    with pytest.warns(UserWarning, match=r"ssdlite.pt was saved at step 2 of 10: its training has not finished"):
        init_from_checkpoint(build_supernet(fits, 4)[0], str(detector), ["a", "b", "c", "d"], fits.model)


def test_a_checkpoint_teacher_of_other_classes_is_picked_by_name_or_refused(tiny_config, tmp_path):
    """supernet.distill.checkpoint of another class count was a raw traceback; of the same count but other
    classes it silently taught the wrong ones."""
    from nasdet.models.imports import class_layer_keys, pick_label_rows
    from nasdet.train.supernet import load_teacher

    ckpt = tmp_path / "teacher.pt"
    base = _ssdlite_checkpoint(tiny_config, ckpt, ["a", "b", "c", "d"]).state_dict()
    teacher, note = load_teacher(str(ckpt), ["c", "a"])
    assert str(ckpt) in note and "picked by name" in note
    keys = class_layer_keys(teacher, base)
    got = teacher.state_dict()
    assert keys and all(torch.equal(got[k], pick_label_rows(base[k], 0, 5, [0, 3, 1])) for k in keys)
    for classes in (["a", "b", "c", "d", "e"], ["a", "b", "c", "x"]):
        with pytest.raises(CheckpointError, match=r"supernet.distill.checkpoint .*teacher.pt was trained on other "
                                                  r"classes than the data's: it records 4 \['a', 'b', 'c', 'd'\], the "
                                                  rf"data has {len(classes)} \['a'"):
            load_teacher(str(ckpt), classes)
    unnamed = tmp_path / "unnamed.pt"
    _ssdlite_checkpoint(tiny_config, unnamed, None)
    with pytest.raises(CheckpointError, match=r"supernet.distill.checkpoint .*unnamed.pt \(the data has 5 classes\) "
                                              "does not fit"):
        load_teacher(str(unnamed), ["a", "b", "c", "d", "e"])


def test_pretrain_says_and_records_where_the_supernet_and_its_teacher_start(tiny_config, tmp_path):
    """The log said "initialised the supernet from X" for class rows copied by index, and nothing of a
    checkpoint teacher; supernet/metrics.json recorded no start (report.md guessed "from scratch")."""
    import io

    from rich.console import Console

    from nasdet.data.build import build_datasets

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}, "input_size": 64},
                      train={"max_steps": 1}, eval={"max_images": 2},
                      supernet={"report_archs": ["smallest"], "recalib_batches": 1})
    names = build_datasets(cfg, need=("val",))["val"].classes
    ckpt = tmp_path / "swapped.pt"
    _ssdlite_checkpoint(tiny_config, ckpt, [names[1], names[0], *names[2:]])
    sn = cfg.supernet.model_copy(update={"init_from": str(ckpt), "distill": cfg.supernet.distill.model_copy(
        update={"teacher": "checkpoint", "checkpoint": str(ckpt), "coef": 0.1})})
    console = Console(file=io.StringIO(), width=400)
    run_pretrain(cfg.model_copy(update={"supernet": sn}), console=console)
    said = " ".join(console.file.getvalue().split())
    assert f"initialised the supernet from {ckpt}; the rows of the data's 8 classes picked by name from its 8" in said
    assert f"from supernet.init_from {ckpt}; distilling from teacher {ckpt}, its rows of the data's 8 classes" in said
    record = json.loads((tmp_path / "work" / "supernet" / "metrics.json").read_text())
    assert record["start"].startswith(f"from supernet.init_from {ckpt}; distilling from teacher {ckpt}")
    # the start file is recorded by content: a rerun after it changed (a baseline trained again, another file at
    # that path) is refused naming the folder to delete; it was "complete" (or resumed) from the old start
    with_sn = cfg.model_copy(update={"supernet": sn})
    run_pretrain(with_sn, console=Console(file=io.StringIO()))  # unchanged: finished, kept
    _ssdlite_checkpoint(tiny_config, ckpt, [names[1], names[0], *names[2:]], seed=1)
    with pytest.raises(CheckpointError, match=r"was trained from supernet.init_from .*swapped.pt .*another file or "
                                              r"one trained again since: delete .*supernet"):
        run_pretrain(with_sn, console=Console(file=io.StringIO()))


@pytest.mark.parametrize("teacher_model", [{"ssd_levels": ["c3", "c4", "c5"]}, {"anchor_ratio_range": [0.3, 0.95]}])
def test_a_teacher_with_other_anchors_is_refused_before_training(tiny_config, tmp_path, teacher_model):
    """The distillation compares logits anchor by anchor: a teacher with other levels failed mid-run on a tensor
    shape (at supernet.distill.start_epoch), one with other default boxes of the same count distilled silently."""
    import io

    from rich.console import Console

    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}, "input_size": 64},
                      train={"max_steps": 1}, eval={"max_images": 2},
                      supernet={"report_archs": ["smallest"], "recalib_batches": 1})
    names = build_datasets(cfg, need=("val",))["val"].classes
    teacher_cfg = tiny_config("ssdlite", model={"backbone": {"name": "mobilenet_v2", "width_mult": 0.35},
                                                "input_size": 64, **teacher_model})
    teacher = build_detector(teacher_cfg.model, num_classes=len(names))
    ckpt = tmp_path / "teacher.pt"
    save_checkpoint({"model": teacher.state_dict(), "config": config_to_dict(teacher_cfg), "step": 2,
                     "classes": [[i + 1, n] for i, n in enumerate(names)]}, ckpt)
    sn = cfg.supernet.model_copy(update={"distill": cfg.supernet.distill.model_copy(
        update={"teacher": "checkpoint", "checkpoint": str(ckpt), "coef": 0.1, "start_epoch": 1})})
    said = "anchors per image, the supernet" if "ssd_levels" in teacher_model else "as many anchors as the supernet but other boxes"
    with pytest.raises(CheckpointError, match=f"supernet.distill.checkpoint {ckpt}: its detector has .*{said}"):
        run_pretrain(cfg.model_copy(update={"supernet": sn}), console=Console(file=io.StringIO()))
    assert not (tmp_path / "work" / "supernet" / "ckpt").exists()


def test_a_backbone_file_moved_with_the_same_bytes_is_the_same_start(tiny_config, tmp_path):
    """A supernet whose backbone came from a file (`nasdet classify`'s backbone.pt, which pipeline.classify names
    inside the work dir) resumed after the file moved (the work dir renamed) was refused on the path
    ("model.backbone.checkpoint: .../pcA/classify/backbone.pt -> .../pcB/..."): the recorded start is its bytes,
    so the same bytes elsewhere continue the run and other bytes are refused naming the start."""
    import io
    import shutil

    from rich.console import Console

    from nasdet.config import BackboneConfig
    from nasdet.errors import ResumeMismatch
    from nasdet.models.backbones import build_backbone

    quiet = Console(file=io.StringIO())
    first, moved = tmp_path / "pcA" / "backbone.pt", tmp_path / "pcB" / "backbone.pt"
    first.parent.mkdir()
    torch.manual_seed(3)
    torch.save(build_backbone(BackboneConfig(**OFA_TINY["backbone"])).state_dict(), first)

    def with_file(path, steps):
        backbone = {**OFA_TINY["backbone"], **({"checkpoint": str(path)} if path else {})}
        return tiny_config("ssdlite", model={"backbone": backbone},
                           train={"max_steps": steps, "epochs": 1, "ckpt_every_steps": 1}, eval={"max_images": 2},
                           supernet={"report_archs": ["smallest"], "recalib_batches": 1})

    run_pretrain(with_file(first, 1), console=quiet)
    moved.parent.mkdir()
    shutil.move(first, moved)
    run_pretrain(with_file(moved, 2), console=quiet)  # resumed at step 1 from the same start
    assert load_checkpoint(tmp_path / "work" / "supernet" / "ckpt" / "last.pt")["step"] == 2
    torch.manual_seed(4)  # other bytes at another path: another start
    other = tmp_path / "other.pt"
    torch.save(build_backbone(BackboneConfig(**OFA_TINY["backbone"])).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"was trained from model.backbone.checkpoint .*pcA.*backbone.pt"):
        run_pretrain(with_file(other, 2), console=quiet)
    with pytest.raises(ResumeMismatch, match=r"model.backbone.checkpoint: .*pcB/backbone.pt -> None"):
        run_pretrain(with_file(None, 2), console=quiet)


def test_pretrain_sorts_middle_channels_when_expand_opens_and_a_resume_follows(tiny_config, tmp_path, capsys):
    """OFA's progressive shrinking sorts the middle channels at the start of each elastic-expand phase; nasdet's
    pretrain never did. The sort comes with the phase's first step, so a run stopped at the phase's boundary and
    resumed trains as the uninterrupted one; with the phase's own lr (the scheduler restarted, the optimizer's
    state forgotten) too."""
    def cfg_of(work, max_steps):
        return tiny_config("ssdlite", model=OFA_TINY, work_dir=str(tmp_path / work),
                           train={"epochs": 2, "max_steps": max_steps, "ckpt_every_steps": 100},
                           supernet={"recalib_batches": 1, "report_archs": ["smallest"],
                                     "schedule": [{"epoch": 0, "open": {"expand": [6]}},
                                                  {"epoch": 1, "open": {"expand": [4, 6]}, "lr": 0.001}]})

    from nasdet.data.build import build_datasets
    from nasdet.train.supernet import SupernetTrainer

    cfg = cfg_of("whole", 1)
    data = build_datasets(cfg)
    model, space = build_supernet(cfg, data["train"].num_classes)
    per_epoch = SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], data["val"],
                                            tmp_path / "probe").steps_per_epoch
    run_pretrain(cfg_of("whole", per_epoch + 1))
    said = " ".join(capsys.readouterr().out.split())
    assert "epoch 1: expand 4 opens: each block's middle channels sorted by importance (OFA), expand 6 keeping" in said
    assert "epoch 1: the phase's own lr 0.001, the scheduler started again and the optimizer's state forgotten" in said
    run_pretrain(cfg_of("cut", per_epoch))  # stopped at the end of epoch 0, before the sort
    assert "expand 4 opens" not in capsys.readouterr().out
    run_pretrain(cfg_of("cut", per_epoch + 1))
    whole = load_checkpoint(tmp_path / "whole" / "supernet" / "ckpt" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "supernet" / "ckpt" / "last.pt")
    assert cut["step"] == whole["step"] == per_epoch + 1
    assert all(torch.equal(v, cut["model"][k]) for k, v in whole["model"].items())



def test_a_phase_with_its_own_lr_starts_the_schedule_and_the_optimizer_again(tiny_config, tmp_path):
    """OFA runs each progressive-shrinking phase as a training of its own (train_ofa_net.py: base lr 3e-2 / 2.5e-3 /
    7.5e-3, a cosine each, a fresh optimizer loading only the weights); nasdet's one schedule spanned every phase.
    A phase's lr restarts the scheduler from that lr and forgets the optimizer's state at its first step (a resume
    at the boundary: test_pretrain_sorts_middle_channels_when_expand_opens_and_a_resume_follows)."""
    from nasdet.data.build import build_datasets
    from nasdet.train.supernet import SupernetTrainer

    def cfg_of(lr):
        phase = {"epoch": 1, "open": {}, **({"lr": lr} if lr else {})}
        return tiny_config("ssdlite", model=OFA_TINY, train={"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1},
                                                            "scheduler": {"name": "cosine", "warmup_steps": 0}},
                           supernet={"schedule": [{"epoch": 0, "open": {"kernel": [7]}}, phase]})

    data = build_datasets(cfg_of(None))
    model, space = build_supernet(cfg_of(None), data["train"].num_classes)
    for lr, kept in ((0.01, False), (None, True)):
        trainer = SupernetTrainer.from_config(cfg_of(lr), model, space, data["supernet_train"], data["val"],
                                              tmp_path / str(lr))
        per_epoch, factor = trainer.steps_per_epoch, trainer.scheduler.lr_lambdas[0]
        assert per_epoch >= 2 and factor(0) == 1.0
        if lr:  # epoch 0's cosine ends at the phase, which starts at 0.01 / 0.1 and decays to its own end
            assert factor(per_epoch - 1) < 0.5 and factor(per_epoch) == pytest.approx(0.1)
            assert factor(2 * per_epoch - 1) < 0.05
        else:  # one cosine over both epochs: its middle
            assert factor(per_epoch) == pytest.approx(0.5)
        if lr:  # a phase from epoch 0 with its own lr keeps the training's warm-up (it ran at full lr from step 0)
            first = cfg_of(lr)
            first.supernet.schedule[0].lr, first.train.scheduler.warmup_steps = 0.05, 2
            warm = SupernetTrainer.from_config(first, model, space, data["supernet_train"], data["val"],
                                               tmp_path / "warm").scheduler.lr_lambdas[0]
            assert warm(0) == pytest.approx(0.5 * 0.001) and warm(2) == pytest.approx(0.5)
        for p in trainer.params:
            trainer.optimizer.state[p]["momentum_buffer"] = torch.ones_like(p)
        trainer.epoch, trainer.batch_in_epoch = 1, 0
        trainer.before_step(per_epoch)
        assert all(bool((trainer.optimizer.state[p].get("momentum_buffer", torch.zeros(1)) == 1).all()) == kept
                   for p in trainer.params)
