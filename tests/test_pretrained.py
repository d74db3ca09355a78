"""torchvision ImageNet weights by name (its hub cache, its file names) and torchvision's files as backbone
checkpoints: nasdet's backbones then compute what torchvision's own modules compute. Nothing downloads:
the cache is seeded with state_dicts of torchvision's exact layout (random init) under torchvision's names."""
import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from conftest import randomize
from test_errors import assert_one_line, cli, tiny_cfg_file  # noqa: F401 (fixture)
from test_mbv2_elastic import one_thread  # noqa: F401 (autouse fixture)

from nasdet.config import BackboneConfig
from nasdet.errors import CheckpointError, ConfigError, PretrainedWeightsUnavailable
from nasdet.models.backbones import build_backbone
from nasdet.models.backbones.pretrained import map_torchvision_state_dict, torchvision_weights

MBV2_TAPS = {"c2": 3, "c3": 6, "c4": 13, "c5": 18}  # last features index of each level in torchvision's MobileNetV2


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME) where any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(url, dst, *args, **kwargs):
        raise AssertionError(f"a download was attempted: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def seed_cache(folder: Path, arch: str, weights_name: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``arch`` (random weights, non-trivial BN stats) saved as the file of ``weights_name``."""
    torch.manual_seed(seed)
    model = randomize(getattr(tvm, arch)(), seed=seed).eval()
    weights = tvm.get_model_weights(arch)[weights_name]
    torch.save(model.state_dict(), folder / Path(weights.url).name)
    return model


def torchvision_levels(model: torch.nn.Module, x: torch.Tensor, taps: dict[str, int] | None = None) -> dict:
    """c2..c5 computed by torchvision's own modules: a ResNet's stem and layers, a MobileNet's features cut."""
    if isinstance(model, tvm.ResNet):
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        out = {}
        for i, level in enumerate(("c2", "c3", "c4", "c5"), start=1):
            y = out[level] = getattr(model, f"layer{i}")(y)
        return out
    return {level: model.features[:end + 1](x) for level, end in taps.items()}


def max_rel_diff(got: dict, want: dict) -> float:
    assert list(got)[:4] == ["c2", "c3", "c4", "c5"] and set(want) == {"c2", "c3", "c4", "c5"}
    return max(((got[k] - want[k]).abs().max() / want[k].abs().max().clamp(min=1)).item() for k in want)


@pytest.mark.parametrize("arch, weights_name, source", [
    ("mobilenet_v2", "IMAGENET1K_V1", "pretrained"),
    ("mobilenet_v2", "IMAGENET1K_V2", "checkpoint"),
    ("mobilenet_v3_large", "imagenet", "pretrained"),
    ("mobilenet_v3_small", "IMAGENET1K_V1", "pretrained"),
    ("resnet18", "imagenet", "checkpoint"),
    ("resnet34", "IMAGENET1K_V1", "pretrained"),
    ("resnet50", "IMAGENET1K_V2", "pretrained"),
])
def test_torchvision_weights_give_torchvision_features(hub, arch, weights_name, source):
    tv = seed_cache(hub, arch, "DEFAULT" if weights_name == "imagenet" else weights_name)
    if source == "pretrained":
        cfg = BackboneConfig(name=arch, pretrained=weights_name)
    else:  # torchvision's file as it is, classifier included
        cfg = BackboneConfig(name=arch, checkpoint=str(next(hub.iterdir())))
    net = build_backbone(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = getattr(net, "stage_ends", None)
        assert max_rel_diff(net(x), torchvision_levels(tv, x, taps)) < 1e-6
    assert net.out_channels["c5"] == torchvision_levels(tv, x, taps)["c5"].shape[1]


@pytest.mark.parametrize("space", ["mbv2_elastic", "mbv2_width"])
@pytest.mark.parametrize("source", ["pretrained", "checkpoint"])
def test_mbv2_spaces_default_subnet_is_torchvision_mobilenet_v2(hub, space, source):
    tv = seed_cache(hub, "mobilenet_v2", "IMAGENET1K_V2")
    cfg = (BackboneConfig(name=space, pretrained="imagenet") if source == "pretrained"
           else BackboneConfig(name=space, checkpoint=str(next(hub.iterdir()))))
    net = build_backbone(cfg).eval()
    assert net.active_arch == net.search_space().default()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = torchvision_levels(tv, x, MBV2_TAPS)
        # hidden channels are sorted by importance: the same sums in another order, so float rounding only
        assert max_rel_diff(net(x), want) < 1e-6
        assert max_rel_diff(net.export()(x), want) < 1e-6


def test_the_cache_file_is_torchvisions_own_name_and_folder(hub):
    weights = torchvision_weights("mobilenet_v2", "imagenet")
    assert weights is tvm.MobileNet_V2_Weights.DEFAULT and weights.name == "IMAGENET1K_V2"
    assert torchvision_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is tvm.ResNet50_Weights.IMAGENET1K_V1
    assert torchvision_weights("mbv2_width", "imagenet1k_v1") is tvm.MobileNet_V2_Weights.IMAGENET1K_V1
    assert Path(torch.hub.get_dir()) / "checkpoints" == hub
    seed_cache(hub, "mobilenet_v3_small", "IMAGENET1K_V1")
    assert [p.name for p in hub.iterdir()] == ["mobilenet_v3_small-047dcff4.pth"]
    build_backbone(BackboneConfig(name="mobilenet_v3_small", pretrained="imagenet"))  # no download


def test_without_network_the_error_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        build_backbone(BackboneConfig(name="resnet50", pretrained="IMAGENET1K_V1"))
    line = str(err.value)
    assert "\n" not in line and "resnet50-0676ba61.pth" in line and str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in line and "name resolution" in line
    assert isinstance(err.value, CheckpointError)


def test_offline_pretrained_is_one_cli_line(tiny_cfg_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code, out, exc = cli("train", tiny_cfg_file(train={"max_steps": 1}), "--set", "model.backbone.width_mult=1.0",
                         "--set", "model.backbone.pretrained=imagenet")
    assert_one_line(code, out, exc, "mobilenet_v3_small-047dcff4.pth", str(tmp_path / "torch" / "hub" / "checkpoints"))


def test_unknown_weights_name_width_and_backbone_are_config_errors(hub):
    with pytest.raises(ConfigError, match=r"'IMAGENET1K_V9' is not a torchvision weights name of resnet18; choose "
                                          r"from \['imagenet', 'IMAGENET1K_V1'\]"):
        build_backbone(BackboneConfig(name="resnet18", pretrained="IMAGENET1K_V9"))
    with pytest.raises(ConfigError, match=r"mobilenet_v2 exist for width_mult 1.0 only, not 0.5"):
        build_backbone(BackboneConfig(name="mbv2_elastic", width_mult=0.5, pretrained="imagenet"))
    with pytest.raises(ConfigError, match=r"'ofa_mbv3' has no torchvision ImageNet weights"):
        build_backbone(BackboneConfig(name="ofa_mbv3", pretrained="imagenet"))
    with pytest.raises(ValueError, match="not both"):
        BackboneConfig(name="resnet18", pretrained="imagenet", checkpoint="x.pt")


def test_a_wrong_checkpoint_names_both_layouts_and_keys(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(tvm.resnet18().state_dict(), resnet)
    with pytest.raises(CheckpointError) as err:
        build_backbone(BackboneConfig(name="mobilenet_v3_small", checkpoint=str(resnet)))
    line = str(err.value)
    assert "\n" not in line and str(resnet) in line
    assert "expected nasdet's mobilenet_v3_small backbone (e.g. ['features.0.0.weight'" in line
    assert "found torchvision's ResNet layout (conv1, bn1, layer1-4, fc) (e.g. ['conv1.weight'" in line
    with pytest.raises(CheckpointError, match=r"resnet34 state_dict \(e.g. \['conv1.weight'.*found torchvision's "
                                              r"ResNet layout.*missing key\(s\): \['layer1.2.conv1.weight'"):
        build_backbone(BackboneConfig(name="resnet34", checkpoint=str(resnet)))
    mbv2 = tmp_path / "mobilenet_v2.pth"
    torch.save(tvm.mobilenet_v2(width_mult=0.5).state_dict(), mbv2)  # torchvision's layout, another width
    with pytest.raises(CheckpointError, match=r"torchvision's mobilenet_v2\(width_mult=1.0\) state_dict.*found "
                                              r"torchvision's MobileNet layout \(features.0-18, classifier\).*"
                                              r"mis-shaped key\(s\): \['features.0.0.weight: got \(16, 3, 3, 3\)"):
        build_backbone(BackboneConfig(name="mbv2_elastic", checkpoint=str(mbv2)))


def test_nasdet_own_backbone_checkpoints_still_load(tmp_path):
    for name in ("resnet18", "mbv2_width"):
        src = randomize(build_backbone(BackboneConfig(name=name, norm="frozen_bn" if name == "resnet18" else "bn")))
        torch.save({"model": src.state_dict()}, tmp_path / f"{name}.pt")
        loaded = build_backbone(BackboneConfig(name=name, checkpoint=str(tmp_path / f"{name}.pt")))
        own = loaded.state_dict()
        assert all(torch.equal(v, own[k]) for k, v in src.state_dict().items() if k in own)


def test_a_torchvision_classification_references_checkpoint_is_a_backbone_checkpoint(tmp_path):
    """An ImageNet backbone trained with torchvision's classification references is saved with its optimizer,
    scheduler and argparse.Namespace of arguments: refused ("cannot be loaded"), while the detector import took
    the same kind of file from the detection references."""
    import argparse

    tv = randomize(tvm.resnet18()).eval()
    file = tmp_path / "checkpoint.pth"
    optimizer = torch.optim.SGD(tv.parameters(), lr=0.1, momentum=0.9)
    torch.save({"model": tv.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 89,
                "args": argparse.Namespace(model="resnet18", lr=0.1, epochs=90)}, file)
    net = build_backbone(BackboneConfig(name="resnet18", checkpoint=str(file))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(net(x), torchvision_levels(tv, x)) < 1e-6


def test_map_torchvision_state_dict_drops_the_classifier_and_renames_the_resnet_stem():
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    state = tvm.resnet18().state_dict()
    mapped = map_torchvision_state_dict(backbone, state)
    assert set(mapped) == set(backbone.state_dict())
    assert torch.equal(mapped["stem.0.weight"], state["conv1.weight"]) and "fc.weight" not in mapped
    assert torch.equal(mapped["stem.1.running_var"], state["bn1.running_var"])


# ------------------------------------------------ the other choices of the MobileNetV2 spaces (docs/pretrained.md)
def without_blocks(tv: torch.nn.Module, dropped: set[int]) -> torch.nn.Sequential:
    return torch.nn.Sequential(*(m for i, m in enumerate(tv.features) if i not in dropped))


def top_l1(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest per-hidden-channel L1 norms of a projecting 1x1 conv weight (out, hidden, 1, 1), descending."""
    return weight.abs().sum(dim=(0, 2, 3)).sort(descending=True).values[:k]


def pretrained_space(hub: Path, space: str):
    """torchvision's MobileNetV2 in the cache, the space built from it (default arch active) and an image."""
    tv = seed_cache(hub, "mobilenet_v2", "IMAGENET1K_V1")
    net = build_backbone(BackboneConfig(name=space, pretrained="IMAGENET1K_V1")).eval()
    return tv, net, net.search_space().default(), torch.randn(1, 3, 64, 64)


def assert_stage3_block1_keeps_top_l1(net, tv, arch, hidden: int) -> None:
    """With ``arch``, stage3.block1 (torchvision's features 8) keeps the ``hidden`` channels of largest L1."""
    net.set_arch(arch)
    block = net.stages[2].blocks[1]
    kept = block.project_conv.conv.weight[:, :block.project_conv.active_in]
    assert kept.shape[1] == hidden and torch.equal(top_l1(kept, hidden), top_l1(tv.features[8].conv[2].weight, hidden))


def test_mbv2_elastic_kernels_expands_and_depths_start_as_documented(hub):
    tv, net, default, x = pretrained_space(hub, "mbv2_elastic")
    with torch.no_grad():
        want = torchvision_levels(tv, x, MBV2_TAPS)
        # kernels 5 and 7: the 3x3 at the centre, zeros around it (identity transforms): the same network
        net.set_arch({n: 7 if n.endswith(".kernel") else v for n, v in default.items()})
        assert max_rel_diff(net(x), want) < 1e-6
        net.set_arch({n: 5 if n.endswith(".kernel") else v for n, v in default.items()})
        assert max_rel_diff(net(x), want) < 1e-6
        # a shallower stage drops its last blocks: torchvision's network without them (stage3 = features 7-10)
        net.set_arch({**default, "stage3.depth": 2})
        short = without_blocks(tv, {9, 10})
        got = net(x)
        assert max_rel_diff(got, {"c2": want["c2"], "c3": want["c3"], "c4": short[:12](x), "c5": short(x)}) < 1e-6
    # expand 3 keeps the hidden channels whose projection has the largest L1 norm
    assert_stage3_block1_keeps_top_l1(net, tv, {**default, "stage3.block1.expand": 3}, 192)


def test_mbv2_width_widths_keep_the_most_important_channels_and_zero_drops_the_block(hub):
    tv, net, default, x = pretrained_space(hub, "mbv2_width")
    with torch.no_grad():
        net.set_arch({**default, "stage3.block3.width": 0.0})  # features 10
        short = without_blocks(tv, {10})
        want = torchvision_levels(tv, x, MBV2_TAPS)
        assert max_rel_diff(net(x), {"c2": want["c2"], "c3": want["c3"], "c4": short[:13](x), "c5": short(x)}) < 1e-6
    assert_stage3_block1_keeps_top_l1(net, tv, {**default, "stage3.block1.width": 0.5}, 192)


def test_a_scratch_subnet_keeps_the_pretrained_backbone(hub, tiny_config):
    """tune.init: scratch re-initialises the detector, but not the ImageNet weights the config gives the backbone."""
    from nasdet.train.trained import build_static_model

    seed_cache(hub, "mobilenet_v2", "IMAGENET1K_V1")
    backbone = BackboneConfig(name="mbv2_elastic", pretrained="IMAGENET1K_V1")
    cfg = tiny_config("ssdlite", model={"backbone": backbone.model_dump()})
    body_arch = {**backbone_default(backbone), "stage3.depth": 2, "stage4.block0.kernel": 7, "stage2.block1.expand": 3}
    arch = {"input_size": 96, **{f"backbone.{k}": v for k, v in body_arch.items()}}
    static, _ = build_static_model(cfg, 3, arch)
    got = static.backbone.body.state_dict()
    want = build_backbone(backbone).export(body_arch).state_dict()
    assert set(got) == set(want) and all(torch.equal(v, got[k]) for k, v in want.items())
    scratch_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": BackboneConfig(
        name="mbv2_elastic")})})
    scratch, _ = build_static_model(scratch_cfg, 3, arch)
    assert not torch.equal(scratch.backbone.body.state_dict()["features.0.0.weight"], got["features.0.0.weight"])


def backbone_default(cfg: BackboneConfig) -> dict:
    return build_backbone(BackboneConfig(name=cfg.name)).search_space().default()


def test_mbv3_width_takes_torchvisions_mobilenet_v3_large_imagenet_weights(hub):
    """mbv3_width refused pretrained: imagenet ("has no torchvision ImageNet weights"), yet took the very same
    file as a checkpoint; its default subnet is torchvision's network."""
    tv = seed_cache(hub, "mobilenet_v3_large", "DEFAULT")
    net = build_backbone(BackboneConfig(name="mbv3_width", pretrained="imagenet")).eval()
    assert net.active_arch == net.search_space().default()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = net(x), torchvision_levels(tv, x, net.stage_ends)
        assert max_rel_diff(got, want) < 1e-6
        assert max_rel_diff(net.export()(x), want) < 1e-6
    with pytest.raises(ConfigError, match=r"model.backbone.pretrained 'imagenet': torchvision's ImageNet weights of "
                                          r"mobilenet_v3_large exist without reduced_tail only"):
        build_backbone(BackboneConfig(name="mbv3_width", pretrained="imagenet", reduced_tail=True))
    with pytest.raises(ConfigError, match=r"mobilenet_v3_large exist for width_mult 1.0 only, not 0.5"):
        build_backbone(BackboneConfig(name="mbv3_width", pretrained="imagenet", width_mult=0.5))


def test_a_trained_checkpoint_loads_without_the_imagenet_file_it_started_from(hub, tiny_config):
    """Every weight of a trained (or tuned) detector is in its checkpoint: evaluating or exporting it on another
    machine, or after the torch cache was cleared, must not ask for the ImageNet file its config started from (the
    hub fixture fails the test on any download; the cache is emptied before the checkpoints are loaded)."""
    from rich.console import Console

    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.models.supernet import build_supernet, detector_space, export_detector
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.train.trained import build_static_model, load_trained_model

    file = hub / Path(tvm.get_model_weights("mobilenet_v2")["IMAGENET1K_V1"].url).name
    seed_cache(hub, "mobilenet_v2", "IMAGENET1K_V1")
    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "pretrained": "IMAGENET1K_V1"}})
    nc = build_datasets(cfg, need=("val",))["val"].num_classes
    trained = build_detector(cfg.model, num_classes=nc)
    supernet, space = build_supernet(cfg, nc)
    ckpt, sn = hub.parent.parent / "last.pt", hub.parent.parent / "supernet.pt"
    save_checkpoint({"model": trained.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    save_checkpoint({"model": supernet.state_dict(), "config": config_to_dict(cfg), "space_id": space.space_id}, sn)
    file.unlink()  # the cache cleared (or another machine)
    loaded = load_trained_model(cfg, ckpt, nc)  # (on a supernet backbone: the default subnet it trains, static)
    own = detector_space(trained)
    got = loaded.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in export_detector(trained, own.default(), own).state_dict().items())
    static, _ = build_static_model(cfg, nc, space.default(), sn)  # a subnet of the supernet checkpoint likewise
    want, got = export_detector(supernet, space.default(), space).state_dict(), static.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in want.items())
    # and the search's supernet
    from nasdet.search.scorers import load_trained_supernet
    from nasdet.workdir import WorkDir

    w = WorkDir.of(cfg)
    w.supernet.checkpoint.parent.mkdir(parents=True)
    w.supernet.checkpoint.write_bytes(sn.read_bytes())
    ctx = load_trained_supernet(cfg, w, Console(quiet=True))
    got = ctx.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in supernet.state_dict().items())


def test_stages_whose_weights_are_a_checkpoints_read_no_imagenet_file(hub, tiny_config):
    """A tune from the supernet, a resumed or finished stage, the import of a trained detector, the cost of the
    config's model and the controls' costs hold or need no start weights: with the cache cleared (another machine,
    offline) each runs without reading or downloading the ImageNet file the config names (the hub fixture fails
    the test on a download). A tune from the supernet downloaded it to build the space alone."""
    from rich.console import Console

    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.models import build_detector
    from nasdet.models.supernet import build_supernet
    from nasdet.pipeline import controls_plan
    from nasdet.space import save_arch
    from nasdet.stages.baseline import import_baseline, run_cost
    from nasdet.stages.common import train_detector
    from nasdet.stages.pretrain import run_pretrain
    from nasdet.stages.tune import run_tune
    from nasdet.train.checkpoint import save_checkpoint
    from nasdet.workdir import WorkDir

    quiet = Console(quiet=True)
    file = hub / Path(tvm.get_model_weights("mobilenet_v2")["IMAGENET1K_V1"].url).name
    seed_cache(hub, "mobilenet_v2", "IMAGENET1K_V1")
    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "pretrained": "IMAGENET1K_V1"}},
                      train={"max_steps": 2, "epochs": 1, "ckpt_every_steps": 1},
                      tune={"recalib_batches": 1, "eval_initial": False}, eval={"max_images": 2},
                      report={"controls_draws": 3})
    nc = build_datasets(cfg, need=("val",))["val"].num_classes
    w = WorkDir.of(cfg)
    supernet, space = build_supernet(cfg, nc)
    w.supernet.checkpoint.parent.mkdir(parents=True)
    save_checkpoint({"model": supernet.state_dict(), "config": config_to_dict(cfg), "space_id": space.space_id},
                    w.supernet.checkpoint)
    save_arch(w.root / "search" / "best_arch.json", space.default(), space)
    trained = hub.parent.parent / "trained.pt"
    save_checkpoint({"model": build_detector(cfg.model, num_classes=nc).state_dict(), "config": config_to_dict(cfg)},
                    trained)
    train_detector(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 1})}), None, "own",
                   console=quiet)  # one step of two, from the ImageNet file: resumed below
    file.unlink()  # the cache cleared (or another machine)
    assert run_tune(cfg, console=quiet)["step"] == 2
    assert run_tune(cfg, console=quiet)["step"] == 2  # finished: its record again
    train_detector(cfg, None, "own", console=quiet)  # resumed at step 1
    assert json.loads((w.root / "own" / "metrics.json").read_text())["step"] == 2
    assert controls_plan(cfg, w)  # the controls' archs, costed in the supernet's space
    imported = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": str(trained)})})
    assert "AP" in import_baseline(imported, console=quiet)
    assert run_cost(cfg, latency=False, console=quiet)["macs"]
    # a supernet from a trained detector (ENOT's init_from the baseline): every backbone weight is the detector's
    from_own = cfg.model_copy(update={"supernet": cfg.supernet.model_copy(update={
        "init_from": str(w.root / "own" / "ckpt" / "last.pt"), "report_archs": ["smallest"], "recalib_batches": 1})})
    run_pretrain(from_own, work_dir=w.root.parent / "from_own", console=quiet)
    # pipeline.classify's supernet: classify's backbone.pt named as the checkpoint of a config naming ImageNet weights
    body = hub.parent.parent / "backbone.pt"
    torch.save(supernet.backbone.body.state_dict(), body)
    both = cfg.model.backbone.model_copy(update={"checkpoint": str(body)})
    built = build_backbone(both).state_dict()  # (built once: once per tensor took 44 s of the suite)
    assert all(torch.equal(v, built[k]) for k, v in supernet.backbone.body.state_dict().items())
    assert not file.exists()


def test_a_backbone_named_for_the_baseline_is_not_dropped_for_pipeline_baseline_backbone(tmp_path):
    """README's `nasdet train CONFIG --set model.backbone.name=resnet18 --set model.backbone.pretrained=imagenet` on
    the demo config (pipeline.baseline_backbone: mobilenet_v2) trained a MobileNetV2 baseline without a word (or
    refused with an error about mobilenet_v2's weights): the named network is no supernet, so it is an error
    saying which key to set."""
    cfg_file = Path(__file__).parent.parent / "configs" / "demo" / "pipeline_shapes.yaml"
    out = assert_one_line(*cli("train", cfg_file, "--work-dir", tmp_path / "run", "--set", "model.backbone.name=resnet18",
                               "--set", "model.backbone.width_mult=1.0"),
                          "pipeline.baseline_backbone mobilenet_v2", "resnet18 is no supernet",
                          "set pipeline.baseline_backbone=resnet18 (or null)")
    assert not (tmp_path / "run").exists(), out
