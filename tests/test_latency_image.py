"""The image a detector is timed on: noise for a detector whose work does not depend on the image; for Faster R-CNN,
whose box head runs on its RPN's proposals (none on noise for a trained RPN), the real image its export is timed
on, in the search's latency backends, the lookup table's rest, the search's baseline, the report and `nasdet cost`."""
from __future__ import annotations

import random

import torch

from nasdet.data.build import build_datasets
from nasdet.export import noise_image, resized_image, timing_inputs, tracing_example
from nasdet.models import build_detector, get_input_size

DETNAS_TINY = {"backbone": {"name": "detnas_tiny"}, "input_size": 64, "fpn_channels": 32, "rpn_post_nms_top_n_test": 20}


def _proposes_nothing_on_noise(model):
    """The RPN of ``model`` as a trained one behaves: no proposal on random noise (neighbouring pixels far apart),
    its proposals on real images. Returns the list of proposal counts the box head is given, run by run."""
    rpn_forward = type(model.rpn).forward
    seen: list[int] = []

    def forward(self, images, features, targets=None):
        boxes, losses = rpn_forward(self, images, features, targets)
        x = images.tensors
        noisy = bool((x[..., 1:] - x[..., :-1]).abs().mean() > 0.5)
        return [b[:0] if noisy else b for b in boxes], losses

    model.rpn.forward = forward.__get__(model.rpn)
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    return seen


def _frcnn_and_val(tiny_config):
    cfg = tiny_config("faster_rcnn", model={"rpn_post_nms_top_n_test": 20})
    val = build_datasets(cfg, need=("val",))["val"]
    torch.manual_seed(0)
    return cfg, build_detector(cfg.model, num_classes=val.num_classes).eval(), val


def test_the_search_times_a_faster_rcnn_candidate_on_a_real_image(tiny_config, monkeypatch):
    """The torch backend timed every candidate on noise, on which a trained RPN proposes nothing: the box head ran
    on no proposal, its cost missing from the candidate's latency. Now on the image of
    the search split its export would be timed on (the one it detects most in, at its input size)."""
    from nasdet.search.latency import latency_function, latency_images

    cfg, model, val = _frcnn_and_val(tiny_config)
    seen = _proposes_nothing_on_noise(model)
    images = latency_images(cfg, val)
    assert len(images) == min(cfg.export.check_images, len(val)) and images[0].dtype == torch.uint8
    fn = latency_function("torch", None, None, warmup=1, runs=2, threads=1, real_images=images)
    seen.clear()
    assert fn(model, {}) > 0
    assert seen and min(seen) > 1  # the box head ran on proposals in every timed run (none, or the graph's empty one)
    seen.clear()
    latency_function("torch", None, None, warmup=1, runs=2, threads=1)(model, {})  # no images: noise, as before
    assert seen and max(seen) <= 1


def test_the_onnxruntime_backends_trace_and_time_faster_rcnn_as_its_export(tiny_config, monkeypatch):
    """onnxruntime's end-to-end file of a candidate was traced on noise (a graph of the empty path, wrong on real
    images) and timed on noise: now traced on the tracing example and timed on it at the input size."""
    import nasdet.export
    import nasdet.models.cost
    from nasdet.search.latency import latency_images, measure_latency_onnx_e2e

    cfg, model, val = _frcnn_and_val(tiny_config)
    _proposes_nothing_on_noise(model)
    images = latency_images(cfg, val)
    traced, fed = [], []
    export_onnx, time_session = nasdet.export.export_onnx, nasdet.models.cost.time_session

    def tracing(detector, path, *args, example=None, **kw):
        traced.append(example)
        return export_onnx(detector, path, *args, example=example, **kw)

    def timing(session, feed, warmup, runs):
        fed.append(feed["image"])
        boxes = session.run(None, feed)[0]
        assert len(boxes) > 0  # the graph detects on the image it is timed on
        return time_session(session, feed, warmup, runs)

    monkeypatch.setattr(nasdet.export, "export_onnx", tracing)
    monkeypatch.setattr(nasdet.models.cost, "time_session", timing)
    measure_latency_onnx_e2e(model, 1, 2, 1, images)
    example = tracing_example(model, images)
    s = get_input_size(model)
    assert torch.equal(traced[0], example)
    assert torch.equal(torch.from_numpy(fed[0]), resized_image(example, s, s))


def test_detectors_whose_work_does_not_follow_the_image_are_timed_on_noise_and_read_nothing(tiny_config):
    """An SSDLite's figure is the same on any image: no image is read for it, and it is timed on the noise it was."""
    from nasdet.search.latency import latency_images

    cfg = tiny_config("ssdlite")
    val = build_datasets(cfg, need=("val",))["val"]
    model = build_detector(cfg.model, num_classes=val.num_classes).eval()
    assert latency_images(cfg, val) is None
    example, image = timing_inputs(model, [val[0][0]])
    assert example is None and torch.equal(image, noise_image(get_input_size(model)))


def test_the_lookup_tables_rest_of_faster_rcnn_is_timed_on_a_real_image(tiny_config, shapes_dir):
    """The table's rest (stem, neck, heads, decoding, NMS) of a Faster R-CNN space is timed on a real image, in an
    entry of its own: a table timed on noise before (its box head left out) is not read for it."""
    from nasdet.models.supernet import build_supernet, export_detector
    from nasdet.search.latency import LatencyTable, latency_images

    cfg = tiny_config("faster_rcnn", model=DETNAS_TINY)
    val = build_datasets(cfg, need=("val",))["val"]
    supernet, space = build_supernet(cfg, val.num_classes)
    supernet.eval()
    arch = space.sample(random.Random(0))
    static = export_detector(supernet, arch, space).eval()
    s = arch["input_size"]
    table = LatencyTable(None, warmup=1, runs=2, threads=1, real_images=latency_images(cfg, val))
    on_noise = LatencyTable(None, real_images=None).rest_key(static, s)
    table.rest[on_noise] = 1e6  # timed on noise by an earlier table: not this entry
    predicted = table.predict(static, arch, supernet, space)
    assert f"{on_noise}|real image" in table.rest and predicted < 1e6 and not on_noise.endswith("real image")
