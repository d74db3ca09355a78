"""mbv2_width: ENOT's per-block hidden-width space built from a trained MobileNetV2."""
import random

import pytest
import torch

from conftest import randomize
from test_mbv2_elastic import max_diff, one_thread  # noqa: F401 (autouse fixture)
from torchvision.models.mobilenetv2 import InvertedResidual

from nasdet.models.backbones import BACKBONES
from nasdet.models.backbones.mbv2_width import ENOT_WIDTHS, WidthMobileNetV2, hidden_width, importance_order
from nasdet.space import ArchError

WM = 0.35


def trained_pair(seed: int = 1):
    """A 'trained' torchvision MobileNetV2 backbone (random BN stats) and the width space built from it."""
    torch.manual_seed(seed)
    tv = randomize(BACKBONES["mobilenet_v2"](width_mult=WM, norm="bn"), seed=seed).eval()
    net = WidthMobileNetV2(width_mult=WM).eval()
    net.load_standard_state_dict(tv.state_dict())
    return tv, net


def test_space_has_enot_17_blocks_and_zero_only_where_residual():
    net = WidthMobileNetV2(width_mult=WM)
    space = net.search_space()
    assert len(space) == 17 and net.block_names[0] == "first_block.width"
    assert space["first_block.width"] == (0.08, 0.17, 0.33, 0.5, 1.0)
    assert space["stage1.block0.width"] == (0.08, 0.17, 0.33, 0.5, 1.0)  # stride 2: no skip
    assert space["stage1.block1.width"] == (0.0, 0.08, 0.17, 0.33, 0.5, 1.0)  # residual
    assert space["stage4.block0.width"][0] == 0.08  # 64 -> 96: not residual
    assert all(v == 1.0 for v in space.default().values())
    assert hidden_width(96, 0.17) == 16 and hidden_width(48, 0.08) == 4 and hidden_width(96, 0.0) == 0


def test_importance_order_puts_largest_l1_first_and_keeps_the_function():
    w = torch.tensor([[1.0, -3.0, 0.5, 2.0], [0.0, 1.0, -0.5, -2.0]]).view(2, 4, 1, 1)
    assert importance_order(w).tolist() == [1, 3, 0, 2]  # L1 per hidden channel: 1, 4, 1, 4 -> ties keep order
    tv, net = trained_pair()
    for block in [net.first_block] + [b for s in net.stages for b in s.blocks]:
        norms = block.project_conv.conv.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(norms[:-1] >= norms[1:])  # sorted, largest first
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(tv(x), net(x)) < 1e-5  # the permutation computes the same network
    # without reordering, the prefixes are not the important channels (the test can fail)
    plain = WidthMobileNetV2(width_mult=WM)
    plain.load_standard_state_dict(tv.state_dict(), reorder=False)
    norms = plain.stages[2].blocks[1].project_conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert not torch.all(norms[:-1] >= norms[1:])


def test_default_arch_equals_the_baseline_and_exports_its_layout():
    tv, net = trained_pair()
    static = net.export(net.search_space().default()).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(tv(x), static(x)) < 1e-5
    assert [type(m).__name__ for m in static.features] == [type(m).__name__ for m in tv.features]
    for a, b in zip(static.features, tv.features):  # same shapes layer for layer (channel order may differ)
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


@pytest.mark.parametrize("which", ["smallest", "random0", "random1", "skips"])
def test_export_equals_supernet(which):
    _, net = trained_pair(seed=3)
    space = net.search_space()
    arch = {"smallest": space.smallest(), "skips": {n: c[0] for n, c in space.choices.items()}}.get(which)
    if arch is None:
        arch = space.sample(random.Random(which))
    net.set_arch(arch)
    static = net.export().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(net(x), static(x)) < 1e-5
    skipped = sum(v == 0 for v in arch.values())
    blocks = [m for m in static.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17 - skipped  # skipped blocks are left out, not kept as identities
    hidden = [m.conv[0][0].out_channels for m in blocks[1:]]
    kept = [b for s in net.stages for b in s.blocks if b.width > 0]
    assert hidden == [hidden_width(b.full, b.width) for b in kept]
    assert static.features[0][0].out_channels == hidden_width(net.first_block.full, arch["first_block.width"])


def test_enot_searched_arch_round_trip_and_errors():
    net = WidthMobileNetV2(width_mult=WM)
    space = net.search_space()
    assert net.arch_from_enot([0] * 17) == space.default()
    enot = [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]  # ssd_mnv2_tune_on_resolution.py
    arch = net.arch_from_enot(enot)
    assert arch["stage2.block1.width"] == arch["stage3.block0.width"] == 0.5 and arch["stage5.block1.width"] == 0.33
    assert net.enot_from_arch(arch) == enot
    rng = random.Random(0)
    for _ in range(20):
        a = space.sample(rng)
        assert net.arch_from_enot(net.enot_from_arch(a)) == a
    with pytest.raises(ArchError, match="16 entries"):
        net.arch_from_enot([0] * 16)
    with pytest.raises(ArchError, match=r"index 5 \(width 0.0\) for stage1.block0.width"):
        net.arch_from_enot([0, 5] + [0] * 15)
    with pytest.raises(ArchError, match="entry 6"):
        net.arch_from_enot([6] + [0] * 16)
    assert ENOT_WIDTHS[0] == 1.0


def test_detector_builds_and_trains_with_mbv2_width():
    from nasdet.config import make_model_config
    from nasdet.models import build_detector
    from nasdet.models.supernet import detector_space, export_detector, set_detector_arch

    model = build_detector(make_model_config(detector="ssdlite", backbone={"name": "mbv2_width", "width_mult": WM},
                                             input_size=96, extra_channels=[64, 32, 32, 16]), num_classes=3)
    space = detector_space(model)
    arch = space.sample(random.Random(1))
    set_detector_arch(model, arch, space)
    model.train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2])}]
    loss = sum(model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    static = export_detector(model, arch, space).eval()
    model.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(model.backbone.body(x), static.backbone.body(x)) < 1e-5


def test_tune_reads_enot_searched_arch(tiny_config):
    from nasdet.config import ConfigError
    from nasdet.models.supernet import build_supernet
    from nasdet.stages.tune import resolve_tune_arch

    enot = [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 5, 0]
    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_width", "width_mult": WM}, "input_size": 64},
                      tune={"searched_arch": enot})
    _, space = build_supernet(cfg, 3)
    arch, source = resolve_tune_arch(cfg, space)
    assert source == "tune.searched_arch" and arch["input_size"] == 64
    assert arch["backbone.stage2.block1.width"] == 0.5 and arch["backbone.stage6.block0.width"] == 1.0
    assert arch["backbone.stage5.block2.width"] == 0.0  # index 5: the residual block is dropped
    with pytest.raises(ConfigError, match="not both"):
        tiny_config("ssdlite", tune={"searched_arch": enot, "arch": "x.json"})
