import random

import pytest
import torch

from conftest import randomize
from torchvision.models.mobilenetv2 import InvertedResidual

from nasdet.config import make_model_config
from nasdet.models import build_detector
from nasdet.models.backbones import BACKBONES
from nasdet.models.backbones.mbv2_elastic import ElasticInvertedResidual, ElasticMobileNetV2
from nasdet.search.cost import count_params
from nasdet.space import ArchError
from nasdet.space.elastic import ElasticBatchNorm2d, ElasticConv2d

WM = 0.35  # widths 16, 8, 8, 16, 24, 32, 56, 112, last conv 1280 (torchvision keeps 1280 below 1.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to OpenMP waits when another job holds the cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def max_diff(a, b) -> float:
    assert list(a) == list(b) == ["c2", "c3", "c4", "c5"]
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_search_space_and_default_arch():
    net = ElasticMobileNetV2(width_mult=WM)
    space = net.search_space()
    assert len(space) == 5 + 16 * 2  # depth of the 5 stages with n > 1; kernel + expand of 16 blocks
    assert space["stage1.depth"] == (1, 2) and space["stage3.depth"] == (1, 2, 3, 4)
    assert "stage6.depth" not in space and space["stage6.block0.kernel"] == (3, 5, 7)
    assert space["stage4.block2.expand"] == (3, 6)
    default = space.default()
    assert net.active_arch == default
    assert all(v == 3 for n, v in default.items() if n.endswith("kernel"))
    assert all(v == 6 for n, v in default.items() if n.endswith("expand"))
    assert default["stage3.depth"] == 4 and default["stage5.depth"] == 3
    assert net.out_channels == {"c2": 8, "c3": 16, "c4": 32, "c5": 1280}
    assert ElasticMobileNetV2().out_channels == {"c2": 24, "c3": 32, "c4": 96, "c5": 1280}
    assert ElasticMobileNetV2(width_mult=1.4).widths[-1] == 1792  # last conv scales above 1.0 only
    assert BACKBONES["mbv2_elastic"](width_mult=WM, norm="bn").active_arch == default


@pytest.mark.parametrize("width_mult", [1.0, WM])
def test_default_export_is_torchvision_mobilenet_v2(width_mult):
    net = ElasticMobileNetV2(width_mult=width_mult)
    tv = BACKBONES["mobilenet_v2"](width_mult=width_mult, norm="bn")
    static = net.export()
    assert repr(static.features) == repr(tv.features)  # same modules, shapes, strides, paddings, in order
    assert count_params(static) == count_params(tv)
    assert static.stage_ends == tv.stage_ends and static.out_channels == tv.out_channels
    static.load_state_dict(tv.state_dict())  # strict: identical keys and shapes


def test_load_standard_state_dict_gives_torchvision_outputs():
    torch.manual_seed(0)
    tv = randomize(BACKBONES["mobilenet_v2"](width_mult=WM, norm="bn"), seed=1).eval()
    net = randomize(ElasticMobileNetV2(width_mult=WM), seed=2).eval()  # different stats and transforms
    net.load_standard_state_dict(tv.state_dict())  # hidden channels sorted by importance: float rounding only
    for r in (64, 96):
        x = torch.randn(2, 3, r, r)
        with torch.no_grad():
            want, got, exported = tv(x), net(x), net.export()(x)
        assert max_diff(want, got) < 1e-5 and max_diff(want, exported) < 1e-5
    net.load_standard_state_dict(tv.state_dict(), reorder=False)  # torchvision's channel order: bit for bit
    with torch.no_grad():
        assert max_diff(tv(x), net(x)) == 0
    dw = net.stages[0].blocks[0].depth_conv
    w = dw.conv.weight
    assert torch.equal(w[:, :, 2:5, 2:5], tv.features[2].conv[1][0].weight)
    ring = w.detach().clone()
    ring[:, :, 2:5, 2:5] = 0
    assert not ring.any()  # zeros around the 3x3 centre
    assert torch.equal(dw.kernel_transforms["7to5"], torch.eye(25))
    # kernels 5 and 7 start as the loaded 3x3 (zero ring, identity transforms)
    net.set_arch({n: (7 if n.endswith("kernel") else v) for n, v in net.search_space().default().items()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(tv(x), net(x)) < 1e-5


def test_load_standard_state_dict_names_bad_keys():
    net = ElasticMobileNetV2(width_mult=WM)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = BACKBONES["mobilenet_v2"](width_mult=WM, norm="bn").state_dict()
    state.pop("features.5.conv.1.0.weight")
    state["features.99.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing key\(s\): \['features.5.conv.1.0.weight'\].*"
                                         r"1 unexpected key\(s\): \['features.99.weight'\]"):
        net.load_standard_state_dict(state)
    wrong_width = BACKBONES["mobilenet_v2"](width_mult=0.5, norm="bn").state_dict()
    with pytest.raises(ValueError, match=r"mis-shaped key\(s\): \['features.2.conv.2.weight: got \(16, 48, 1, 1\), "
                                         r"expected \(8, 48, 1, 1\)'"):
        net.load_standard_state_dict(wrong_width)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded
    # a whole torchvision model (with classifier) and a frozen-BN backbone (no num_batches_tracked) load
    from torchvision.models import mobilenet_v2
    net.load_standard_state_dict(mobilenet_v2(width_mult=WM).state_dict())
    net.load_standard_state_dict(BACKBONES["mobilenet_v2"](width_mult=WM, norm="frozen_bn").state_dict())


@pytest.mark.parametrize("which", ["largest", "smallest", "random0", "random1", "random2"])
def test_export_matches_supernet(which):
    torch.manual_seed(0)
    net = randomize(ElasticMobileNetV2(width_mult=WM)).eval()
    space = net.search_space()
    arch = {"largest": space.largest(), "smallest": space.smallest()}.get(which) or space.sample(
        random.Random(which))
    net.set_arch(arch)
    static = net.export()
    assert not any(isinstance(m, (ElasticConv2d, ElasticBatchNorm2d, ElasticInvertedResidual, ElasticMobileNetV2))
                   for m in static.modules())
    blocks = [m for m in static.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 1 + sum(arch.get(f"stage{s}.depth", 1) for s in range(1, 7))
    assert static.out_channels == net.out_channels and not static.training
    assert all(p.requires_grad for p in static.parameters())  # transformed kernels train too
    for r in (64, 96):
        x = torch.randn(2, 3, r, r)
        with torch.no_grad():
            a, b = net(x), static(x)
        for level, stride in zip(a, (4, 8, 16, 32)):
            assert b[level].shape == (2, net.out_channels[level], r // stride, r // stride)
        assert max_diff(a, b) < 1e-5, (which, r)


def test_frozen_bn_option_exports_with_parity():
    net = randomize(BACKBONES["mbv2_elastic"](width_mult=WM, norm="frozen_bn")).train()  # frozen: train = eval
    net.set_arch(net.search_space().sample(random.Random(5)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(net(x), net.export()(x)) < 1e-5
    assert not any(p.requires_grad for n, p in net.named_parameters() if ".bn." in n)


def test_set_arch_refuses_a_bad_arch_by_name():
    net = ElasticMobileNetV2(width_mult=WM)
    arch = net.search_space().largest()
    arch["stage2.block1.expand"] = 4
    with pytest.raises(ArchError, match=r"'stage2.block1.expand' = 4 is not allowed; allowed values: \[3, 6\]"):
        net.set_arch(arch)
    with pytest.raises(ArchError, match="stage6.depth"):
        net.set_arch({**net.search_space().largest(), "stage6.depth": 1})
    with pytest.raises(ArchError, match=r"'stage1.depth' = 0 is not allowed"):
        net.set_arch({**net.search_space().largest(), "stage1.depth": 0})
    assert net.active_arch == net.search_space().default()  # nothing changed


def test_training_step_touches_only_the_active_subnet():
    torch.manual_seed(0)
    net = ElasticMobileNetV2(width_mult=WM).train()
    arch = net.search_space().largest()
    arch.update({"stage1.depth": 1, "stage3.depth": 2, "stage2.block0.kernel": 3, "stage5.block0.expand": 3})
    net.set_arch(arch)
    out = net(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out.values()).backward()
    for s, j in [(1, 1), (3, 2), (3, 3)]:  # skipped by depth
        assert all(p.grad is None for p in net.stages[s - 1].blocks[j].parameters()), (s, j)
    for s, j in [(1, 0), (3, 1), (4, 2), (6, 0)]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in net.stages[s - 1].blocks[j].named_parameters() if "kernel_transforms" not in n)
    t = net.stages[1].blocks[0].depth_conv.kernel_transforms  # kernel 3: both transforms
    assert t["7to5"].grad.abs().sum() > 0 and t["5to3"].grad.abs().sum() > 0
    block = net.stages[4].blocks[0]  # expand 3: the upper half of the mid channels gets no gradient
    mid = block.expand_conv.active_out
    assert mid * 2 == block.expand_conv.max_out
    assert block.expand_conv.conv.weight.grad[mid:].abs().sum() == 0


def test_detector_with_mbv2_elastic_trains_one_step():
    torch.manual_seed(0)
    cfg = make_model_config(detector="ssdlite", backbone={"name": "mbv2_elastic", "width_mult": WM}, input_size=96,
                            extra_channels=[64, 32, 32, 16])
    model = build_detector(cfg, num_classes=2)
    body = model.backbone.body
    assert isinstance(body, ElasticMobileNetV2) and body.active_arch == body.search_space().default()
    body.set_arch(body.search_space().sample(random.Random(3)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images = [torch.rand(3, 90, 100), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    w = body.stages[2].blocks[0].expand_conv.conv.weight
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(before, w)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
