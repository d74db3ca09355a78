import random
import time

import pytest
import torch

from conftest import randomize

from nasdet.config import make_model_config
from nasdet.models import build_detector
from nasdet.models.backbones import BACKBONES
from nasdet.models.backbones.ofa_mobilenet import OFAMobileNetV3, imagenet_form
from nasdet.search.cost import count_macs, count_params
from nasdet.space import ArchError
from nasdet.space.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticSE

WM = 0.25  # tiny widths 8..40, final expand 240


def imagenet_size(net: OFAMobileNetV3, arch, r: int = 224) -> tuple[float, float]:
    model = imagenet_form(net.export(arch)).eval()
    params = count_params(model)
    with torch.no_grad():
        macs = count_macs(model.to("meta"), torch.empty(1, 3, r, r, device="meta"))
    return macs / 1e6, params / 1e6


def test_published_sizes_of_the_extreme_subnets():
    net = OFAMobileNetV3()
    space = net.search_space()
    macs, params = imagenet_size(net, space.largest())
    assert macs == pytest.approx(566.2, rel=0.02) and params == pytest.approx(7.67, rel=0.02)
    macs, params = imagenet_size(net, space.smallest())
    assert macs == pytest.approx(121.3, rel=0.02) and params == pytest.approx(3.41, rel=0.02)
    macs, _ = imagenet_size(net, space.smallest(), r=128)
    assert macs == pytest.approx(41.5, rel=0.02)


def test_search_space_names_and_widths():
    net = OFAMobileNetV3()
    space = net.search_space()
    assert len(space) == 5 + 5 * 4 * 2
    assert space["stage1.depth"] == (2, 3, 4)
    assert space["stage3.block2.kernel"] == (3, 5, 7) and space["stage5.block3.expand"] == (3, 4, 6)
    assert net.active_arch == space.largest() == space.default()
    assert net.out_channels == {"c2": 24, "c3": 40, "c4": 112, "c5": 960}
    assert OFAMobileNetV3(width_mult=1.2).widths == (24, 24, 32, 48, 96, 136, 192, 1152, 1536)
    assert OFAMobileNetV3.tiny().search_space().space_id == space.space_id  # widths are not part of the space


@pytest.mark.parametrize("which", ["largest", "smallest", "random0", "random1", "random2"])
def test_export_matches_supernet(which):
    torch.manual_seed(0)
    net = randomize(OFAMobileNetV3(width_mult=WM)).eval()
    space = net.search_space()
    arch = {"largest": space.largest(), "smallest": space.smallest()}.get(which) or space.sample(
        random.Random(which))
    net.set_arch(arch)
    static = net.export()
    assert not any(isinstance(m, (ElasticConv2d, ElasticBatchNorm2d, ElasticSE, OFAMobileNetV3))
                   for m in static.modules())
    assert static.out_channels == net.out_channels and not static.training
    # every weight of the exported subnet trains, transformed (k5 / k3) kernels included (they once did not)
    assert all(p.requires_grad for p in static.parameters())
    for r in (64, 96):
        x = torch.randn(2, 3, r, r)
        with torch.no_grad():
            a, b = net(x), static(x)
        assert list(a) == list(b) == ["c2", "c3", "c4", "c5"]
        for level, stride in zip(a, (4, 8, 16, 32)):
            assert b[level].shape == (2, net.out_channels[level], r // stride, r // stride)
            assert (a[level] - b[level]).abs().max().item() < 1e-5, (which, r, level)


def test_export_of_another_arch_keeps_the_active_one():
    net = OFAMobileNetV3(width_mult=WM).eval()
    space = net.search_space()
    small = net.export(space.smallest())
    assert net.active_arch == space.largest()
    assert count_params(small) < count_params(net.export())
    assert len(small.stages[0]) == 2 and len(net.export().stages[0]) == 4


def test_set_arch_refuses_a_bad_arch_by_name():
    net = OFAMobileNetV3(width_mult=WM)
    arch = net.search_space().largest()
    arch["stage2.block1.kernel"] = 9
    with pytest.raises(ArchError, match=r"'stage2.block1.kernel' = 9 is not allowed; allowed values: \[3, 5, 7\]"):
        net.set_arch(arch)
    with pytest.raises(ArchError, match="stage6.depth"):
        net.set_arch({**net.search_space().largest(), "stage6.depth": 2})
    assert net.active_arch == net.search_space().largest()  # nothing changed


def test_set_arch_is_cheap():
    net = OFAMobileNetV3(width_mult=WM)
    rng = random.Random(0)
    archs = [net.search_space().sample(rng) for _ in range(50)]
    t = time.perf_counter()
    for arch in archs:
        net.set_arch(arch)
    per_call = (time.perf_counter() - t) / len(archs)
    assert per_call / 20 < 1e-3  # well under a millisecond per block (about 30 us measured)


def test_training_step_touches_only_the_active_subnet():
    torch.manual_seed(0)
    net = OFAMobileNetV3(width_mult=WM).train()
    arch = net.search_space().largest()
    arch.update({"stage1.depth": 2, "stage3.depth": 3, "stage2.block0.kernel": 3, "stage4.block1.kernel": 5,
                 "stage5.block0.expand": 3})
    net.set_arch(arch)
    out = net(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out.values()).backward()

    def grads(module):
        return [p.grad for n, p in module.named_parameters() if "kernel_transforms" not in n]

    for s, j in [(1, 2), (1, 3), (3, 3)]:  # skipped by depth
        assert all(g is None for g in grads(net.stages[s - 1].blocks[j])), (s, j)
    for s, j in [(1, 0), (1, 1), (3, 2), (2, 3)]:
        assert all(g is not None and g.abs().sum() > 0 for g in grads(net.stages[s - 1].blocks[j])), (s, j)
    # kernel transforms: 3 uses 7to5 and 5to3, 5 uses 7to5 only, 7 uses none
    t = net.stages[1].blocks[0].depth_conv.kernel_transforms
    assert t["7to5"].grad.abs().sum() > 0 and t["5to3"].grad.abs().sum() > 0
    t = net.stages[3].blocks[1].depth_conv.kernel_transforms
    assert t["7to5"].grad.abs().sum() > 0 and t["5to3"].grad is None
    assert net.stages[3].blocks[0].depth_conv.kernel_transforms["7to5"].grad is None
    # the expand=3 block's unused mid channels get no gradient
    block = net.stages[4].blocks[0]
    mid = block.expand_conv.active_out
    assert mid < block.expand_conv.max_out
    assert block.expand_conv.conv.weight.grad[mid:].abs().sum() == 0
    assert block.expand_conv.conv.weight.grad[:mid].abs().sum() > 0


def test_elastic_modules_slice_and_export():
    torch.manual_seed(0)
    conv = ElasticConv2d(16, 24, 1)
    conv.set_active(out_channels=8, in_channels=12)
    x = torch.randn(2, 12, 5, 5)
    assert torch.allclose(conv(x), conv.export()(x), atol=1e-6)
    assert conv.export().weight.shape == (8, 12, 1, 1)
    with pytest.raises(ValueError, match="kernel_size 9"):
        ElasticConv2d(8, 8, (3, 5, 7), depthwise=True).set_active(kernel_size=9)
    with pytest.raises(ValueError, match="only supported for depthwise"):
        ElasticConv2d(8, 8, (3, 5))

    dw = ElasticConv2d(16, 16, (3, 5, 7), stride=2, depthwise=True)
    assert dict(dw.named_parameters()).keys() == {"conv.weight", "kernel_transforms.7to5", "kernel_transforms.5to3"}
    dw.set_active(out_channels=8, kernel_size=3)
    w = dw.active_weight()
    assert w.shape == (8, 1, 3, 3)
    assert torch.equal(w, dw.conv.weight[:8, :, 2:5, 2:5])  # identity transforms = centre crop
    x = torch.randn(1, 8, 9, 9)
    assert torch.allclose(dw(x), dw.export()(x), atol=1e-6)

    bn = ElasticBatchNorm2d(16).train()
    bn.set_active(6)
    bn(torch.randn(4, 6, 3, 3) + 3)
    assert (bn.bn.running_mean[:6] != 0).all() and (bn.bn.running_mean[6:] == 0).all()
    assert (bn.bn.running_var[6:] == 1).all() and bn.bn.num_batches_tracked == 1
    bn.eval()
    x = torch.randn(2, 6, 3, 3)
    assert torch.allclose(bn(x), bn.export().eval()(x), atol=1e-6)

    se = ElasticSE(48)
    se.set_active(24)
    x = torch.randn(2, 24, 4, 4)
    assert torch.allclose(se(x), se.export()(x), atol=1e-6)
    assert se.export().fc1.out_channels == 8


def test_frozen_bn_option_exports_with_parity():
    net = randomize(BACKBONES["ofa_mbv3"](width_mult=WM, norm="frozen_bn")).train()  # frozen: train mode = eval
    net.set_arch(net.search_space().sample(random.Random(5)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), net.export()(x)
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    assert not any(p.requires_grad for n, p in net.named_parameters() if ".bn." in n)


@pytest.mark.parametrize("detector", ["ssdlite", "retinanet"])
def test_detector_with_ofa_backbone_trains_one_step(detector):
    torch.manual_seed(0)
    neck = {"extra_channels": [32, 16, 16, 16]} if detector == "ssdlite" else {"fpn_channels": 16}
    cfg = make_model_config(detector=detector, backbone={"name": "ofa_mbv3", "width_mult": WM}, input_size=64, **neck)
    model = build_detector(cfg, num_classes=2)
    body = model.backbone.body
    assert isinstance(body, OFAMobileNetV3)
    body.set_arch(body.search_space().sample(random.Random(7)))
    model.train()
    images = [torch.rand(3, 70, 90), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


def _sync_bn_case():
    """The same batch, output weights and 24-wide elastic BN (16 active) in every process."""
    torch.manual_seed(0)
    x_full, w_out = torch.randn(8, 16, 5, 5), torch.randn(8, 16, 5, 5)
    bn = ElasticBatchNorm2d(24)
    with torch.no_grad():
        bn.bn.weight.uniform_(0.5, 1.5)
        bn.bn.bias.uniform_(-0.2, 0.2)
    bn.set_active(16)
    return x_full, w_out, bn


def _sync_bn_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x_full, w_out, bn = _sync_bn_case()
        bn.bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bn.bn)  # what the trainer does under DDP on CUDA
        part = slice(rank * 4, rank * 4 + 4)
        x = x_full[part].clone().requires_grad_(True)
        y = bn.train()(x)
        (y * w_out[part]).sum().backward()
        torch.save({"y": y.detach(), "x_grad": x.grad, "w_grad": bn.bn.weight.grad, "mean": bn.bn.running_mean,
                    "var": bn.bn.running_var}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_elastic_bn_synchronises_statistics_under_syncbn(tmp_path):
    """Two gloo ranks with half a batch each == one process with the whole batch (outputs, input and
    affine gradients, running statistics of the active slice; the inactive slice stays untouched)."""
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.spawn(_sync_bn_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    x_full, w_out, ref = _sync_bn_case()
    x = x_full.clone().requires_grad_(True)
    y = ref.train()(x)
    (y * w_out).sum().backward()
    assert torch.allclose(torch.cat([r0["y"], r1["y"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r0["x_grad"], r1["x_grad"]]), x.grad, atol=1e-5)
    assert torch.allclose(r0["w_grad"] + r1["w_grad"], ref.bn.weight.grad, atol=1e-4)  # DDP then averages
    for r in (r0, r1):
        assert torch.allclose(r["mean"], ref.bn.running_mean, atol=1e-6)
        assert torch.allclose(r["var"], ref.bn.running_var, atol=1e-5)
        assert (r["mean"][16:] == 0).all() and (r["var"][16:] == 1).all()


@pytest.mark.parametrize("trained", [(6,), (4, 6)])
def test_middle_channels_sorted_as_ofa_when_a_smaller_expand_opens(trained):
    """OFA sorts each block's middle channels by the L1 norm of its project conv when an elastic-expand phase opens
    (``re_organize_middle_weights``); nasdet trained expand 3 and 4 on arbitrary channel prefixes. The full
    network computes the same after the sort (SE included), a width trained before keeps its channels, and the
    optimizer's state moves with its parameters."""
    from nasdet.space.elastic import apply_channel_moves

    torch.manual_seed(0)
    net = OFAMobileNetV3.tiny()
    randomize(net)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
    block = net.stages[1].blocks[1]  # an SE stage
    from nasdet.models.backbones.ofa_mobilenet import mid_channels

    w4 = mid_channels(block.in_ch, 4)
    assert 0 < w4 < block.expand_bn.bn.weight.shape[0]
    prefix = set(block.project_conv.conv.weight.abs().sum((0, 2, 3))[:w4].tolist())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():  # momentum buffers equal to their parameters: they must stay so
        opt.state[p]["momentum_buffer"] = p.detach().clone()
    apply_channel_moves(net.middle_channel_moves(trained), opt)
    with torch.no_grad():
        after = net(x)
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], p) for p in net.parameters())
    importance = block.project_conv.conv.weight.abs().sum((0, 2, 3))
    if trained == (6,):  # all sorted: expand 4's prefix holds the most important channels
        assert torch.equal(importance, importance.sort(descending=True).values)
    else:  # expand 4's width keeps its channels, sorted among themselves (a new expand 3 takes its best)
        assert set(importance[:w4].tolist()) == prefix
        assert torch.equal(importance[:w4], importance[:w4].sort(descending=True).values)
    se = block.se.expand.weight.abs().sum((0, 2, 3))
    assert torch.equal(se, se.sort(descending=True).values)


def test_the_awnas_recipes_ssd_has_awnas_published_size():
    """aw_nas's SSD extras are its MobileNetV3Block with expansion 0.5 of the INPUT width (480, 256, 128, 128 on
    OFA's 960-wide C5); nasdet built torchvision's SSDLite extras (half the output width) there: the VOC detector
    was 1093.9 / 274.0 M MACs against aw_nas's 1120.3 / 300.4 (largest / smallest, 300 px)."""
    from pathlib import Path

    from nasdet.config import ConfigError, load_config, validate_config
    from nasdet.models.cost import detector_macs
    from nasdet.models.supernet import build_supernet, export_detector

    cfg = load_config(Path(__file__).parent.parent / "configs" / "awnas" / "ofa_mbv3_ssd_supernet_voc.yaml")
    assert cfg.model.ssdlite_extras == "awnas"
    model, space = build_supernet(cfg, 20)
    model.eval()
    for arch, published in ((space.largest(), 1120.3), (space.smallest(), 300.4)):
        macs = detector_macs(export_detector(model, arch, space).eval(), 300)["total"] / 1e6
        assert macs == pytest.approx(published, abs=0.05)
    with pytest.raises(ConfigError, match="model.ssdlite_extras awnas is a choice of SSDLite's own extra layers"):
        validate_config({**cfg.model_dump(mode="json"), "model": {**cfg.model.model_dump(mode="json"),
                                                                 "layout": "torchvision"}}, "x")
