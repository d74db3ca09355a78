import torch
from torch import nn

from nasdet.config import make_model_config
from nasdet.models import build_detector
from nasdet.search.cost import count_macs, count_params, detector_macs, detector_params, measure_latency


def test_macs_of_known_conv_stack_equal_hand_count():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),  # out 16x16x16: 16*16*16 * 3*9
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),  # depthwise: 16*16*16 * 9
        nn.Conv2d(16, 32, 1, bias=False),  # 32*16*16 * 16
        nn.Flatten(), nn.Linear(32 * 16 * 16, 10),  # 8192 * 10
    )
    hand = 16 * 16 * 16 * 27 + 16 * 16 * 16 * 9 + 32 * 16 * 16 * 16 + 8192 * 10
    assert count_macs(net, torch.zeros(1, 3, 32, 32)) == hand
    assert count_params(net) == 16 * 27 + 16 * 9 + 32 * 16 + 8192 * 10 + 10


def test_detector_macs_match_torchvision_published_ssdlite():
    # torchvision's ssdlite320_mobilenet_v3_large reports 0.583 GMACs (weights metadata _ops).
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    assert abs(detector_macs(tv, 320)["total"] / 1e9 - 0.583) < 0.005


def test_macs_grow_with_input_size_and_backbone_is_part():
    m = build_detector(make_model_config(detector="fcos", backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                                   fpn_channels=64, input_size=128), num_classes=3)
    small, big = detector_macs(m, 128), detector_macs(m, 256)
    assert 0 < small["backbone"] < small["total"]
    assert abs(big["total"] / small["total"] - 4) < 0.2
    p = detector_params(m)
    assert 0 < p["backbone"] < p["total"]


def test_a_real_forward_counts_the_same_macs_as_the_meta_device_and_leaves_the_model_as_it_was():
    for detector, neck in (("ssdlite", {"extra_channels": [64, 32, 32, 16]}), ("fcos", {"fpn_channels": 64}),
                           ("retinanet", {"fpn_channels": 64}), ("faster_rcnn", {"fpn_channels": 64}),
                           ("yolov3", {"neck_channels": [32, 24, 16], "head_channels": [32, 24, 16]})):
        m = build_detector(make_model_config(detector=detector, input_size=96, **neck,
                                             backbone={"name": "mobilenet_v3_small", "width_mult": 0.5}), num_classes=3)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        assert detector_macs(m, real=True) == detector_macs(m, real=False), detector
        assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # BN stats too


def test_small_models_and_a_searchs_small_archs_are_counted_with_a_real_forward(tiny_config, monkeypatch):
    import nasdet.models.cost as cost
    import nasdet.search.budget as budget
    from nasdet.models.supernet import build_supernet

    cfg = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}})
    model, space = build_supernet(cfg, 3)
    # the size's over-estimate of the MACs decides before any count (a real forward of a large model is slow)
    assert cost.counts_faster_for_real(model, 96)
    assert not cost.counts_faster_for_real(model, 96 * 64)
    real, counted = [], budget.detector_macs
    monkeypatch.setattr(budget, "detector_macs", lambda *a, **k: (real.append(k["real"]), counted(*a, **k))[1])
    costs = budget.CostModel(model, space)
    assert costs(space.smallest())["macs"] < cost.REAL_COUNT_MACS
    costs(space.largest())
    assert real == [None, True]  # the first as its size says, the next as the first's MACs say
    monkeypatch.setattr(cost, "REAL_COUNT_MACS", 1)  # a space of large archs stays on the meta device
    assert not cost.counts_faster_for_real(model, 96)
    costs = budget.CostModel(model, space)
    costs(space.smallest()), costs(space.largest())
    assert real[2:] == [None, False]


def test_latency_is_measured():
    m = build_detector(make_model_config(detector="ssdlite", backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                                   input_size=96, extra_channels=[64, 32, 32, 16]), num_classes=3)
    lat = measure_latency(m, warmup=1, runs=3, threads=1)
    assert lat["median_ms"] > 0 and lat["p90_ms"] >= lat["median_ms"] and lat["runs"] == 3


def test_onnxruntime_latency_of_the_dense_part():
    from nasdet.search.cost import measure_latency_onnx

    for detector in ("ssdlite", "fcos"):
        neck = {"extra_channels": [64, 32, 32, 16]} if detector == "ssdlite" else {"fpn_channels": 64}
        m = build_detector(make_model_config(detector=detector, backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                                             input_size=128, **neck), num_classes=3)
        lat = measure_latency_onnx(m, warmup=1, runs=3, threads=1)
        assert lat["median_ms"] > 0 and lat["max_abs_diff"] < 1e-3 and lat["device"] == "onnxruntime-cpu"


def test_a_search_says_how_many_archs_it_costed_while_no_candidate_was_scored(tiny_config):
    """Evolution rejects children over the budget before proposing one; under a measured (INT8) latency budget
    each is an export and a timing, and the search printed nothing for minutes. The cost model reports each
    arch it computes (not the cached ones) and the notice says, at most every ``every_s``, how many were costed
    and how many were over the budget."""
    import io

    from rich.console import Console

    from nasdet.models.supernet import build_supernet
    from nasdet.search.budget import Budget, CostModel
    from nasdet.stages.search import CostingNotice, costing_work

    cfg = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}})
    model, space = build_supernet(cfg, 3)
    out = io.StringIO()
    small = CostModel(model, space, ("macs",))(space.smallest())["macs"]
    notice = CostingNotice(Console(file=out, width=300), Budget("macs", small * 1.01), "each one exported",
                           every_s=0.0)
    costs = CostModel(model, space, ("macs",))
    costs.on_computed = notice
    costs(space.smallest()), costs(space.largest()), costs(space.largest())  # the last from the cache
    assert (notice.costed, notice.over) == (2, 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "2 archs costed" in lines[1] and "1 over the budget (macs <=" in lines[1]
    notice.reset()
    assert (notice.costed, notice.over) == (0, 0)
    notice.every_s = 3600.0  # throttled: nothing more within the hour
    costs(space.sample(__import__("random").Random(0)))
    assert len(out.getvalue().splitlines()) == 2

    assert costing_work(cfg.model_copy(update={"cost": cfg.cost.model_copy(update={"latency": "onnxruntime_int8"})}),
                        "latency") == "each one exported, quantized to INT8, timed (onnxruntime_int8)"
    assert costing_work(cfg, "macs") == "each one exported and counted"
