"""ENOT's ssd_mnv2 (ENOT-AutoDL/mmdetection-enot configs/ssd/pascal_voc/ssd_mnv2.py) as ``model.layout: enot``."""
import math
import random

import pytest
import torch

from nasdet.config import ConfigError, make_model_config
from nasdet.models import build_detector, set_input_size
from nasdet.models.supernet import detector_space, export_detector, set_detector_arch
from nasdet.search.cost import detector_macs, detector_params


def enot_ssd_mnv2_layers(size: int, num_classes: int = 20):
    """Convs of ENOT's ssd_mnv2, written from its config and MMDetection 2.16's modules, not from nasdet's:
    MobileNetV2 out_indices (2, 4, 6) with conv2 (320 -> 1280) built and run; SSDNeck in (320,), out (320, 512,
    256), ConvModule 1x1 to half then 3x3 stride 2 (no depthwise); SSDHead use_depthwise: per map a depthwise
    3x3 with BN, then 1x1 convs (with bias) to 15 x (K + 1) and 15 x 4. (cin, cout, kernel, groups, side, bias, bn)."""
    layers, h = [(3, 32, 3, 1, size // 2, False, True)], size // 2
    cin, sides = 32, {}
    for stage, (t, c, n, s) in enumerate([[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                                          [6, 160, 3, 2], [6, 320, 1, 1]]):
        for i in range(n):
            stride = s if i == 0 else 1
            mid = int(round(cin * t))
            if t != 1:
                layers.append((cin, mid, 1, 1, h, False, True))
            h = (h + 2 - 3) // stride + 1
            layers.append((mid, mid, 3, mid, h, False, True))
            layers.append((mid, c, 1, 1, h, False, True))
            cin = c
        sides[stage] = h
    layers.append((320, 1280, 1, 1, h, False, True))  # conv2: computed, not an output
    maps = [(32, sides[2]), (96, sides[4]), (320, sides[6])]
    for cout in (512, 256):  # the neck's extras
        cin, side = maps[-1]
        layers.append((cin, cout // 2, 1, 1, side, False, True))
        side = (side + 2 - 3) // 2 + 1
        layers.append((cout // 2, cout, 3, 1, side, False, True))
        maps.append((cout, side))
    for c, side in maps:  # the head
        for out in (15 * (num_classes + 1), 15 * 4):  # (the background's column)
            layers.append((c, c, 3, c, side, False, True))
            layers.append((c, out, 1, 1, side, True, False))
    return layers


def test_sizes_equal_enot_ssd_mnv2(size=480):
    """ENOT publishes no size for its baseline (its search's limit, 830 M MACs, is thop's count of its own search
    space), so the network is counted here from its layer list; VOC: 20 classes and the background."""
    layers = enot_ssd_mnv2_layers(size)
    params = sum(ci // g * co * k * k + co * bias + 2 * co * bn for ci, co, k, g, _, bias, bn in layers)
    macs = sum(ci // g * co * k * k * side * side for ci, co, k, g, side, _, _ in layers)
    for backbone in ("mobilenet_v2", "mbv2_width"):  # ENOT's space: its default subnet is the baseline
        model = build_detector(make_model_config(detector="ssdlite", layout="enot", backbone={"name": backbone},
                                                 input_size=size), num_classes=20)
        assert detector_params(model)["total"] == params, backbone
        assert detector_macs(model)["total"] == macs, backbone
    assert model.backbone.out_channels_list == [32, 96, 320, 512, 256]
    assert 1.55e9 < macs < 1.65e9  # ENOT's search limit of 830 M is about half of it


def test_anchors_are_enots():
    model = build_detector(make_model_config(detector="ssdlite", layout="enot", backbone={"name": "mobilenet_v2",
                                                                                          "width_mult": 0.35},
                                             input_size=96), num_classes=4)
    gen = model.anchor_generator
    assert gen.num_anchors_per_location() == [15] * 5
    # MMDetection's AnchorGenerator: base size = stride, scales 4 x 2^(i/3), ratio r = h / w, ratios outer, scales
    # inner, centred on the cell's origin, not rounded
    for level, stride in enumerate([8, 16, 32, 64, 128]):
        expected = []
        for r in [1.0, 0.5, 2.0, 0.6666, 1.5]:
            for i in range(3):
                scale = 4 * 2 ** (i / 3)
                w, h = stride * scale / math.sqrt(r), stride * scale * math.sqrt(r)
                expected.append([-w / 2, -h / 2, w / 2, h / 2])
        assert torch.allclose(gen.base_anchors[level], torch.tensor(expected), atol=1e-4)
    levels = gen.level_anchors([(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)], (96, 96))
    assert [len(a) for a in levels] == [15 * n for n in (144, 36, 9, 4, 1)]
    assert torch.allclose(levels[0][15], levels[0][0] + torch.tensor([8.0, 0, 8, 0]))  # the next cell along x
    assert torch.allclose(levels[1][15 * 6], levels[1][0] + torch.tensor([0, 16.0, 0, 16]))  # the next row


def test_head_and_extras_init_and_test_path():
    model = build_detector(make_model_config(detector="ssdlite", layout="enot", backbone={"name": "mobilenet_v2"},
                                             input_size=320), num_classes=20)
    convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 * 5 and all(0.0007 < c.weight.std() < 0.0013 for c in convs if c.weight.numel() > 1000)
    assert all(c.bias is None or not c.bias.any() for c in convs)
    extra = model.backbone.extras[0]
    assert [type(m).__name__ for m in extra] == ["Conv2d", "BatchNorm2d", "ReLU6"] * 2
    assert extra[3].stride == (2, 2) and extra[3].groups == 1 and extra[4].eps == 1e-5
    bound = math.sqrt(6 / (256 * 9 + 512 * 9))  # Xavier-uniform
    assert extra[3].weight.abs().max() <= bound and extra[3].weight.abs().max() > 0.9 * bound
    assert type(model).__name__ == "SSD"  # MMDetection 2.16 keeps boxes clipped empty (3.x drops them)
    assert {m.momentum for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.03}  # its norm_cfg
    assert {m.momentum for m in model.backbone.extras.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    # ENOT's img_norm_cfg (mean [123.675, 116.28, 103.53], std [1, 1, 1] on 0-255 pixels), on nasdet's 0-1 images
    image = torch.rand(3, 320, 320)
    x = model.transform([image])[0].tensors[0]
    want = image * 255 - torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    torch.testing.assert_close(x, want, atol=1e-3, rtol=1e-5)


def test_config_checks():
    cfg = make_model_config(detector="ssdlite", layout="enot")
    assert cfg.ssd_levels == ["c3", "c4", "c5"] and cfg.extra_channels == [512, 256]
    again = make_model_config(**cfg.model_dump())  # a checkpoint's config, every key set
    assert again.ssd_levels == cfg.ssd_levels and again.extra_channels == cfg.extra_channels
    assert make_model_config(detector="ssdlite", layout="enot", extra_channels=[256, 128]).extra_channels == [256, 128]
    with pytest.raises(ConfigError, match="an SSDLite"):
        make_model_config(detector="ssd", layout="enot")
    with pytest.raises(ConfigError, match="c3, c4, c5"):
        make_model_config(detector="ssdlite", layout="enot", ssd_levels=["c4", "c5"])
    with pytest.raises(ConfigError, match="two extra layers") as e:
        make_model_config(detector="ssdlite", layout="enot", extra_channels=[512, 256, 256, 128])
    assert "SSDModelConfig(" not in str(e.value)  # one line, not a dump of the model config
    with pytest.raises(ConfigError, match="drop anchor_aspect_ratios"):
        make_model_config(detector="ssdlite", layout="enot", anchor_aspect_ratios=[[2]] * 5)
    with pytest.raises(ConfigError, match="4 positive ints"):
        make_model_config(detector="ssdlite", extra_channels=[512, 256])  # the other layouts keep four


def test_enots_space_trains_and_exports_its_subnets():
    torch.manual_seed(0)
    model = build_detector(make_model_config(detector="ssdlite", layout="enot", score_thresh=0.0,
                                             backbone={"name": "mbv2_width", "width_mult": 0.35}, input_size=96),
                           num_classes=4)
    space = detector_space(model)
    arch = space.sample(random.Random(3))
    set_detector_arch(model, arch, space)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 10.0, 100.0, 40.0]]), "labels": torch.tensor([3])}]
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.extras[0][0].weight.grad.abs().sum() > 0  # the extras learn from the c5_pre path
    # MMDetection's MobileNetV2 runs its conv2 (to 1280) and outputs it nowhere: no gradient (the trainer finds such
    # parameters before wrapping in DDP)
    assert all(p.grad is None for p in model.backbone.body.final_expand.parameters())
    model.eval()
    static = export_detector(model, arch, space).eval()
    with torch.no_grad():
        ours, theirs = model(images), static(images)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])
    set_input_size(static, 64)
    with torch.no_grad():
        assert len(static(images)) == 2
