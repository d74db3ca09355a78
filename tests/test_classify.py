"""``nasdet classify`` (DetNAS steps 1 and 4): a backbone trained as a classifier on an ImageFolder tree, as a
supernet or as one subnet; resume; bad folders; the backbone file into pretrain (supernet) and tune (subnet)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import tiny_raw
from nasdet.config import ConfigError, validate_config
from nasdet.data.imagefolder import ImageFolderSet, open_classification_splits
from nasdet.data.synthetic import SHAPE_CLASSES
from nasdet.errors import CheckpointError, DataError
from nasdet.models.backbones import build_backbone
from nasdet.models.backbones.ofa_mobilenet import OFAMobileNetV3, imagenet_form as ofa_imagenet_form
from nasdet.models.backbones.shufflenet_spos import ShuffleNetSPOS, imagenet_form as spos_imagenet_form
from nasdet.models.classifier import Classifier, OFAHead, SPOSHead, build_classifier
from nasdet.models.supernet import build_supernet, supernet_body
from nasdet.space import ArchError
from nasdet.stages.classify import run_classify
from nasdet.train.classify import evaluate_classifier, soft_target_loss
from nasdet.train.checkpoint import save_checkpoint
from nasdet.train.trained import build_static_model

TINY_ARCH = {f"backbone.stage{s}.block{j}.op": (s + j) % 4 for s, n in zip((1, 2, 3, 4), (2, 2, 4, 2)) for j in range(n)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from nasdet.data.synthetic_classes import make_synthetic_imagefolder

    out = tmp_path_factory.mktemp("shapes_classes")
    make_synthetic_imagefolder(out, n_train=32, n_val=16, size=32, seed=0)
    return out


def classify_config(shapes_dir, folder, work_dir, backbone=None, **classify):
    raw = tiny_raw(shapes_dir, work_dir, "faster_rcnn")
    raw["model"]["backbone"] = backbone or {"name": "detnas_tiny"}
    raw["classify"] = {"root": str(folder), "input_size": 32, "color_jitter": 0.2,
                       "train": {"epochs": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05},
                                 "scheduler": {"name": "cosine", "warmup_steps": 0}, "ckpt_every_steps": 2,
                                 "log_every_steps": 1, "threads": 1},
                       "supernet": {"recalib_batches": 1}, **classify}
    return raw


def test_synthetic_imagefolder_layout_and_determinism(folder, tmp_path):
    from nasdet.data.synthetic_classes import make_synthetic_imagefolder

    sets = open_classification_splits(folder, "train", "val")
    assert sets["train"].classes == sorted(SHAPE_CLASSES) and len(sets["train"]) == 32 and len(sets["val"]) == 16
    assert all(len(list((folder / "train" / c).iterdir())) == 4 for c in SHAPE_CLASSES)  # balanced
    image, label = sets["train"][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and 0 <= label < 8
    make_synthetic_imagefolder(tmp_path / "again", n_train=8, n_val=8, size=32, seed=0)
    first = sorted((tmp_path / "again" / "train").rglob("*.jpg"))
    assert [p.read_bytes() for p in first] == [(folder / p.relative_to(tmp_path / "again")).read_bytes() for p in first]


def test_bad_image_folders_are_one_line_naming_the_folder_or_file(folder, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSet.open(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(folder / "train", bad / "train")
    (bad / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"empty_class.* hold no image"):
        ImageFolderSet.open(bad / "train")
    (bad / "train" / "empty_class").rmdir()
    victim = next((bad / "train" / "star").iterdir())
    victim.write_bytes(b"not a jpeg")
    ds = ImageFolderSet.open(bad / "train")
    with pytest.raises(DataError, match=f"{victim.name} cannot be decoded"):
        ds[[p for p, _ in ds.samples].index(str(victim))]
    shutil.copytree(folder / "val", bad / "val")
    shutil.rmtree(bad / "val" / "ring")
    with pytest.raises(DataError, match=r"different class folders .*only in train: \['ring'\]"):
        open_classification_splits(bad, "train", "val")
    # one level too deep (train/images/<class>/): it trained a 1-class classifier at top-1 1.0 (QA, session 20)
    shutil.copytree(folder / "train", bad / "deep" / "images")
    with pytest.raises(DataError, match=r"deep has one class folder \(images\); classification needs two or more; "
                                        r"its folder images/ holds folders .*is the set under .*deep/images\?"):
        ImageFolderSet.open(bad / "deep")


def test_config_section(shapes_dir, folder, tmp_path):
    raw = classify_config(shapes_dir, folder, tmp_path)
    raw["classify"]["epochs"] = 3
    with pytest.raises(ConfigError, match="classify.epochs: unknown key"):
        validate_config(raw, "x")
    raw = classify_config(shapes_dir, folder, tmp_path)
    raw["pipeline"] = {"classify": True}
    raw["classify"]["arch"] = {"stage1.block0.op": 1}
    from nasdet.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="pipeline.classify .* without classify.arch"):
        run_pipeline(validate_config(raw, "x"))  # `nasdet classify` takes that config (DetNAS step 4)
    raw = classify_config(shapes_dir, folder, tmp_path, supernet={"distill": {"teacher": "largest"}})
    with pytest.raises(ConfigError, match="soft-target cross-entropy: set loss: kl"):
        validate_config(raw, "x")


def test_reference_heads():
    """SPOS's tail (1x1 conv to 1024 + BN + ReLU, pool, dropout, FC without bias) and OFA's (pool, feature_mix
    to 1280 without BN or bias, h-swish, dropout, FC): sizes as the ImageNet forms nasdet checks against the
    published figures (SPOS's FC has no bias: 1000 parameters fewer)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        spos = build_classifier(validate_config({"data": {"format": "coco", "train": {"annotations": "a", "images": "b"},
                                                          "val": {"annotations": "a", "images": "b"}},
                                                 "model": {"backbone": {"name": "detnas_300M"}}}).model.backbone,
                                1000, 224)
        form = spos_imagenet_form(ShuffleNetSPOS("300M"), "300M")
    assert isinstance(spos.head, SPOSHead) and spos.head.conv_last[0].out_channels == 1024
    assert spos.head.classifier.bias is None and spos.head.dropout.p == 0.1
    assert count(spos) == count(form) - 1000
    ofa = OFAMobileNetV3(width_mult=0.25)
    clf = Classifier(ofa, OFAHead(ofa.out_channels["c5"], 320, 10, 0.1), 64)
    assert count(clf) == count(ofa_imagenet_form(ofa, 0.25, num_classes=10))
    clf.eval()
    x = torch.rand(2, 3, 64, 64)
    assert clf(x).shape == (2, 10) and torch.allclose(clf(list(x)), clf(x))
    assert torch.allclose(clf(torch.nn.functional.interpolate(x, 96)), clf(list(torch.nn.functional.interpolate(x, 96))))


def test_spos_linear_schedule():
    from nasdet.config import SchedulerConfig
    from nasdet.train.optim import WarmupSchedule

    lr = WarmupSchedule(SchedulerConfig(name="linear", warmup_steps=0), 150_000)
    assert [lr(s) for s in (0, 75_000, 150_000)] == [1.0, 0.5, 0.0]


def test_top_k_and_the_soft_target_loss():
    class Fixed(torch.nn.Module):  # class scores = the image's mean pixel per channel, class 0..2
        def forward(self, x):
            return torch.stack([x[:, c].mean((1, 2)) for c in range(3)] + [torch.zeros(len(x))] * 3, 1)

    class Data(torch.utils.data.Dataset):
        num_classes = 6

        def __init__(self, items):
            self.items = items

        def subset(self, idx):
            return Data([self.items[i] for i in idx])

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    img = lambda c: (torch.eye(3)[c].view(3, 1, 1) * 200).expand(3, 4, 4).to(torch.uint8)  # noqa: E731
    data = Data([(img(0), 0), (img(1), 1), (img(2), 0), (img(2), 5)])  # right, right, 2nd of 3 at best, zero-logit tie
    m = evaluate_classifier(Fixed(), data, torch.device("cpu"), batch_size=3)
    assert m["top1"] == 0.5 and m["top5"] == 1.0 and m["images"] == 4
    logits, teacher = torch.randn(4, 6), torch.randn(4, 6)
    expected = torch.nn.functional.kl_div(logits.log_softmax(1), teacher.softmax(1), reduction="batchmean")
    entropy = -(teacher.softmax(1) * teacher.log_softmax(1)).sum(1).mean()
    assert torch.allclose(soft_target_loss(logits, teacher), expected + entropy, atol=1e-5)


def test_supernet_classify_resumes_to_the_uninterrupted_result_and_pretrain_starts_from_it(shapes_dir, folder, tmp_path):
    """DetNAS step 1 then 2: SPOS uniform paths, per-subnet top-1/top-5; a run killed at step 2 and rerun ends
    exactly where the uninterrupted run does; its backbone.pt is what the detector supernet starts from."""
    whole = validate_config(classify_config(shapes_dir, folder, tmp_path / "whole"))
    record = run_classify(whole)
    assert record["mode"] == "supernet" and record["step"] == 8 and set(record["subnets"]) == {"largest", "middle", "smallest"}
    assert all(0 <= r["metrics"]["top1"] <= r["metrics"]["top5"] <= 1 for r in record["subnets"].values())
    cut = classify_config(shapes_dir, folder, tmp_path / "cut")
    cut["classify"]["train"]["max_steps"] = 2
    run_classify(validate_config(cut))
    del cut["classify"]["train"]["max_steps"]
    resumed = run_classify(validate_config(cut))
    log = [json.loads(x) for x in (tmp_path / "cut" / "classify" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    a = torch.load(tmp_path / "whole" / "classify" / "backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "classify" / "backbone.pt", weights_only=True)
    assert a["arch"] is None and a["space_id"] and a["classes"] == sorted(SHAPE_CLASSES)
    assert all(torch.allclose(v, b["state_dict"][k], atol=1e-6) for k, v in a["state_dict"].items())
    assert resumed["subnets"]["largest"]["metrics"] == pytest.approx(record["subnets"]["largest"]["metrics"], abs=1e-5)
    assert run_classify(whole)["step"] == 8  # complete: reported, not trained again
    # SPOS's supernet BN is affine=False: classify.supernet.train_norm_affine false keeps every gamma / beta at
    # 1 / 0 (the head's too), the statistics train
    spos = classify_config(shapes_dir, folder, tmp_path / "spos", supernet={"recalib_batches": 1,
                                                                             "train_norm_affine": False})
    spos["classify"]["train"]["max_steps"] = 2
    run_classify(validate_config(spos))
    state = torch.load(tmp_path / "spos" / "classify" / "ckpt" / "last.pt", weights_only=True)["model"]
    gammas = [k for k in state if k.endswith(".running_var")]
    assert len(gammas) > 20
    for k in gammas:
        bn = k.removesuffix("running_var")
        assert torch.equal(state[bn + "weight"], torch.ones_like(state[bn + "weight"])), bn
        assert torch.equal(state[bn + "bias"], torch.zeros_like(state[bn + "bias"])), bn
    assert sum(not torch.equal(state[k], torch.ones_like(state[k])) for k in gammas) > 10
    # a rerun decides by what the classifier trains with: its own recipe (classify.train) is refused naming the
    # key (it resumed without a word), the detection sections (top-level train, data) are not its
    from nasdet.errors import ResumeMismatch

    other = classify_config(shapes_dir, folder, tmp_path / "whole")
    other["classify"]["train"]["optimizer"]["lr"] = 0.01
    with pytest.raises(ResumeMismatch, match=r"classify.train.optimizer.lr: 0.05 -> 0.01"):
        run_classify(validate_config(other))
    detection = classify_config(shapes_dir, folder, tmp_path / "whole")
    detection["train"]["optimizer"]["lr"] = 0.5
    detection["data"]["search_fraction"] = 0.5
    assert run_classify(validate_config(detection))["step"] == 8

    from nasdet.stages.pretrain import pretrain_config
    from nasdet.workdir import WorkDir

    piped = classify_config(shapes_dir, folder, tmp_path / "whole")
    piped["pipeline"] = {"classify": True}
    cfg = pretrain_config(validate_config(piped), WorkDir(tmp_path / "whole"))
    detector, _ = build_supernet(cfg, 3)
    body = supernet_body(detector).state_dict()
    assert set(body) == set(a["state_dict"]) and all(torch.equal(v, body[k]) for k, v in a["state_dict"].items())


def test_subnet_classify_then_tune_starts_from_it(shapes_dir, folder, tmp_path):
    """DetNAS step 4 then 5: the found subnet alone (an arch file from a search, its input size ignored), its
    backbone.pt into the tuned detector's backbone; another arch, or the supernet, refuse that file."""
    arch_file = tmp_path / "best_arch.json"
    arch_file.write_text(json.dumps({"space_id": "of-the-detector", "arch": {**TINY_ARCH, "input_size": 96}}))
    raw = classify_config(shapes_dir, folder, tmp_path / "wd", arch=str(arch_file))
    raw["classify"]["train"]["epochs"] = 1
    record = run_classify(validate_config(raw))
    assert record["mode"] == "subnet" and record["arch"] == {**TINY_ARCH, "input_size": 32}
    assert 0 <= record["metrics"]["top1"] <= record["metrics"]["top5"] <= 1
    path = tmp_path / "wd" / "classify" / "backbone.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["arch"] == {k[len("backbone."):]: v for k, v in TINY_ARCH.items()}

    raw["model"]["backbone"]["checkpoint"] = str(path)
    raw["tune"] = {"init": "scratch"}
    cfg = validate_config(raw)
    detector, _ = build_static_model(cfg, 3, {**TINY_ARCH, "input_size": 96})
    body = detector.backbone.body.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in saved["state_dict"].items())
    other = {**TINY_ARCH, "backbone.stage1.block0.op": (TINY_ARCH["backbone.stage1.block0.op"] + 1) % 4}
    with pytest.raises(CheckpointError, match=r"differs from the arch to build in 1 choice\(s\).*stage1.block0.op"):
        build_static_model(cfg, 3, {**other, "input_size": 96})
    with pytest.raises(CheckpointError, match="backbone of one subnet .* not a supernet"):
        build_supernet(cfg, 3)
    # step 5 with tune.init: supernet left on: the supernet's weights, and a warning that step 4's are not used
    plain = validate_config({**raw, "model": {**raw["model"], "backbone": {"name": "detnas_tiny"}}})
    supernet, space = build_supernet(plain, 3)
    sn_ckpt = tmp_path / "supernet.pt"
    save_checkpoint({"model": supernet.state_dict(), "space_id": space.space_id, "step": 0}, sn_ckpt)
    with pytest.warns(UserWarning, match=r"holds one subnet's backbone \(`nasdet classify`'s, or a searched DetNAS network\); this tune starts from the supernet"):
        from_supernet, _ = build_static_model(cfg, 3, {**TINY_ARCH, "input_size": 96}, sn_ckpt)
    got = from_supernet.backbone.body.state_dict()
    assert not all(torch.equal(v, got[k]) for k, v in saved["state_dict"].items())
    # the same subnet resumed with another arch is refused, not silently mixed
    raw["classify"]["arch"] = {k: v for k, v in other.items()}
    with pytest.raises(CheckpointError, match="another subnet"):
        run_classify(validate_config({**raw, "model": {**raw["model"], "backbone": {"name": "detnas_tiny"}}}))
    # and the supernet in that folder: named as such (it failed with "910 missing keys")
    whole = {**raw, "classify": {k: v for k, v in raw["classify"].items() if k != "arch"},
             "model": {**raw["model"], "backbone": {"name": "detnas_tiny"}}}
    with pytest.raises(CheckpointError, match="classify/ckpt/last.pt trains a subnet, not the supernet; delete"):
        run_classify(validate_config(whole))
    raw["classify"]["arch"] = {"backbone.stage9.block0.op": 1}
    with pytest.raises(ArchError, match=r"classify.arch \(inline\).*stage9"):
        run_classify(validate_config({**raw, "work_dir": str(tmp_path / "wd2"),
                                      "model": {**raw["model"], "backbone": {"name": "detnas_tiny"}}}))


def test_ofa_progressive_shrinking_with_distillation(shapes_dir, folder, tmp_path):
    """OFA's recipe on a classifier supernet: kernel phase first, then depth and expand open; the largest
    subnet teaches the sampled ones in place with OFA's soft-target loss."""
    raw = classify_config(shapes_dir, folder, tmp_path, backbone={"name": "ofa_mbv3", "width_mult": 0.25}, supernet={
        "sampling": "sandwich", "sandwich_random": 1, "recalib_batches": 1, "report_archs": ["largest", "smallest"],
        "schedule": [{"epoch": 0, "open": {"depth": [4], "expand": [6]}}, {"epoch": 1, "open": {"expand": [4, 6]}}],
        "distill": {"teacher": "largest", "loss": "kl", "coef": 1.0, "temperature": 1.0}})
    raw["classify"]["train"]["max_steps"] = 5
    record = run_classify(validate_config(raw))
    assert set(record["subnets"]) == {"largest", "smallest"}
    assert record["subnets"]["smallest"]["arch"]["backbone.stage1.depth"] == 2  # all phases open at the end
    log = [json.loads(x) for x in (tmp_path / "classify" / "log.jsonl").read_text().splitlines()]
    assert any("s1/distill" in r for r in log)
    loaded = build_backbone(validate_config({**raw, "model": {**raw["model"], "backbone": {
        "name": "ofa_mbv3", "width_mult": 0.25, "checkpoint": str(tmp_path / "classify" / "backbone.pt")}}}).model.backbone)
    assert isinstance(loaded, OFAMobileNetV3)
    # OFA's teacher as a separate frozen network: a classify checkpoint (here that supernet, its largest subnet)
    raw["classify"]["supernet"]["distill"] = {"teacher": "checkpoint", "loss": "kl", "coef": 1.0,
                                             "checkpoint": str(tmp_path / "classify" / "ckpt" / "last.pt")}
    raw["classify"]["train"]["max_steps"] = 1
    run_classify(validate_config({**raw, "work_dir": str(tmp_path / "taught")}))
    log = [json.loads(x) for x in (tmp_path / "taught" / "classify" / "log.jsonl").read_text().splitlines()]
    assert "s0/distill" in log[0]  # the largest subnet too learns from the separate teacher


def test_a_plain_backbone_trains_as_it_is(shapes_dir, folder, tmp_path):
    raw = classify_config(shapes_dir, folder, tmp_path, backbone={"name": "mobilenet_v3_small", "width_mult": 0.5})
    raw["classify"]["train"]["max_steps"] = 1
    record = run_classify(validate_config(raw))
    assert record["mode"] == "backbone" and record["arch"] is None
    build_backbone(validate_config({**raw, "model": {**raw["model"], "backbone": {  # its backbone.pt loads as it is
        "name": "mobilenet_v3_small", "width_mult": 0.5, "checkpoint": str(tmp_path / "classify" / "backbone.pt")}}}).model.backbone)
    raw["classify"]["arch"] = {"stage1.block0.op": 0}
    with pytest.raises(ConfigError, match="not a searchable backbone"):
        run_classify(validate_config({**raw, "work_dir": str(tmp_path / "other")}))


def nasdet(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nasdet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def test_cli_make_synthetic_imagefolder_and_a_missing_folder(shapes_dir, tmp_path):
    r = nasdet("data", "make-synthetic", tmp_path / "c", "--train", 8, "--val", 8, "--size", 32, "--format", "imagefolder")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "c" / "val").iterdir()) == sorted(SHAPE_CLASSES)
    raw = classify_config(shapes_dir, tmp_path / "nowhere", tmp_path / "wd")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    r = nasdet("classify", tmp_path / "c.yaml")
    assert r.returncode == 2 and "nowhere" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) == 1


def test_torchrun_two_processes_classify_supernet(shapes_dir, folder, tmp_path):
    """DDP (torchrun's module): both ranks train the same sampled paths (sandwich, in-place distillation), and
    top-1/top-5 are summed over the ranks' shards of val."""
    raw = classify_config(shapes_dir, folder, tmp_path / "wd", backbone={"name": "ofa_mbv3", "width_mult": 0.25},
                          supernet={"recalib_batches": 1, "report_archs": ["smallest"], "sampling": "sandwich",
                                    "sandwich_random": 1, "distill": {"teacher": "largest", "loss": "kl"}})
    raw["classify"]["train"].update(epochs=1, max_steps=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "nasdet", "classify", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads((tmp_path / "wd" / "classify" / "metrics.json").read_text())
    assert record["subnets"]["smallest"]["metrics"]["images"] == 16
    log = [json.loads(x) for x in (tmp_path / "wd" / "classify" / "log.jsonl").read_text().splitlines()]
    assert any("s1/distill" in row for row in log)


def test_classify_scores_eval_max_images_spread_over_the_classes(shapes_dir, folder, tmp_path, monkeypatch):
    """eval.max_images was ignored; the first images of an image folder would be of the first classes only."""
    import nasdet.train.classify as train_classify

    scored = []
    real = train_classify.evaluate_classifier
    monkeypatch.setattr(train_classify, "evaluate_classifier",
                        lambda model, ds, *a, **k: (scored.append(sorted({y for _, y in ds.samples})), real(model, ds, *a, **k))[1])
    raw = classify_config(shapes_dir, folder, tmp_path / "wd", backbone={"name": "mobilenet_v3_small", "width_mult": 0.5})
    raw["classify"]["train"].update(epochs=1, max_steps=1)
    raw["eval"] = {"batch_size": 8, "max_images": 4}
    record = run_classify(validate_config(raw))
    assert record["mode"] == "backbone" and record["val_images"] == 4
    assert scored == [[0, 2, 4, 6]]  # 4 of 16 images (2 per class, class by class): every other class


def test_classify_says_and_records_the_backbones_start(shapes_dir, folder, tmp_path):
    """`nasdet classify` of a backbone started from model.backbone.checkpoint logged "from scratch" and recorded
    no start."""
    import io

    from rich.console import Console

    backbone = {"name": "mobilenet_v3_small", "width_mult": 0.5}
    src = tmp_path / "backbone.pt"
    torch.save({"model": build_backbone(validate_config(tiny_raw(shapes_dir, tmp_path)).model.backbone).state_dict()}, src)
    raw = classify_config(shapes_dir, folder, tmp_path / "wd", backbone={**backbone, "checkpoint": str(src)})
    raw["classify"]["train"]["max_steps"] = 1
    console = Console(file=io.StringIO(), width=400)
    record = run_classify(validate_config(raw), console=console)
    assert f"backbone from {src}" in " ".join(console.file.getvalue().split())
    assert record["start"] == f"backbone from {src}"
    assert json.loads((tmp_path / "wd" / "classify" / "metrics.json").read_text())["start"] == f"backbone from {src}"
    src.unlink()  # its start file gone (moved, another machine): every weight of the finished run is its checkpoint's
    assert run_classify(validate_config(raw), console=Console(file=io.StringIO()))["start"] == f"backbone from {src}"


def test_a_classify_run_resumed_mid_epoch_with_loader_workers_is_the_uninterrupted_run(shapes_dir, folder, tmp_path):
    """The detection sets' items carried their augmentation seeds to the loader's workers, the classification
    set's did not: a classify run (DetNAS / OFA step 1) resumed mid-epoch drew other crops, flips and colours
    (249 tensors apart at the end; README says a resumed run trains as the uninterrupted one)."""
    from nasdet.train.checkpoint import load_checkpoint

    def run(work, steps):
        raw = classify_config(shapes_dir, folder, tmp_path / work, backbone={"name": "mobilenet_v3_small",
                                                                           "width_mult": 0.5}, num_workers=1)
        raw["classify"]["train"].update(max_steps=steps, ckpt_every_steps=2, epochs=2)
        run_classify(validate_config(raw))
        return load_checkpoint(tmp_path / work / "classify" / "ckpt" / "last.pt")

    end = run("whole", 4)
    mid = run("cut", 2)
    assert mid["batch_in_epoch"] == 2 and mid["epoch"] == 0  # stopped mid-epoch
    after = run("cut", 4)
    assert all(torch.equal(v, after["model"][k]) for k, v in end["model"].items())
