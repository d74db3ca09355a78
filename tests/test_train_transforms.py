"""Training augmentation at the training resolution: the loader's resize is the model's own, the random
draws keep their order, and each trainer resizes to the largest size its steps use."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from nasdet.config import AugmentConfig
from nasdet.data.build import build_datasets
from nasdet.data.dataset import DetectionDataset
from nasdet.data.transforms import (PhotometricDistort, TrainTransforms, adjust_hue_uint8, build_train_transforms,
                                     to_model_input)
from nasdet.models import build_detector
from nasdet.models.detectors import set_input_size


def _steps(tf) -> list[str]:
    return [type(t).__name__ for t in tf.transforms]


def test_resize_comes_after_the_canvas_ops_and_before_the_colour_ops():
    aug = AugmentConfig(photometric=0.5, zoom_out=0.5, iou_crop=True, hflip=0.5)
    assert _steps(build_train_transforms(aug)) == [
        "DropCrowd", "PhotometricDistort", "RandomZoomOut", "IoUCropIfBoxes", "RandomHorizontalFlip",
        "SanitizeBoundingBoxes"]  # native size: SSD's order
    at = build_train_transforms(aug).at_size(120)
    assert _steps(at) == ["DropCrowd", "RandomZoomOut", "IoUCropIfBoxes", "Resize", "PhotometricDistort",
                          "RandomHorizontalFlip", "SanitizeBoundingBoxes"]
    assert at.transforms[3].size == [120, 120] and not at.transforms[3].antialias
    off = AugmentConfig(at_train_size=False)
    assert "Resize" not in _steps(build_train_transforms(off).at_size(120))
    # nothing random before the resize: drop crowd boxes, resize and sanitize are the fixed part of each image
    plain = build_train_transforms(AugmentConfig(photometric=0.5, hflip=0.5)).at_size(120)
    assert _steps(plain) == ["DropCrowd", "Resize", "SanitizeBoundingBoxes", "PhotometricDistort",
                             "RandomHorizontalFlip"]
    assert _steps(plain.fixed) == _steps(plain)[:3] and _steps(plain.random) == _steps(plain)[3:]
    assert plain.fixed_tag == ("train_fixed", 120)
    assert at.fixed is None and build_train_transforms(aug).fixed is None  # a random canvas, or no resize


def test_loader_resize_matches_the_models_and_the_draws_keep_their_order(tiny_config):
    cfg = tiny_config()
    raw = build_datasets(cfg, need=("train",))["train"].with_transforms(None)
    image, target = raw[0]
    size = 80
    assert tuple(image.shape[-2:]) != (size, size)
    model = build_detector(cfg.model, num_classes=raw.num_classes).train()
    set_input_size(model, size)
    resized, _ = TrainTransforms(AugmentConfig(photometric=0, hflip=0), size)(image, target)
    assert tuple(resized.shape) == (3, size, size) and resized.dtype == torch.uint8
    # the model's own resize of the native image: the loader's differs only by its rounding to uint8
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    by_model = model.transform(to_model_input([image], "cpu"))[0].tensors[0] * std + mean
    assert (by_model - resized.float() / 255).abs().max() <= 1.01 / 255
    # and the model leaves an image the loader resized as it is
    again = model.transform(to_model_input([resized], "cpu"))[0].tensors[0] * std + mean
    assert torch.allclose(again, resized.float() / 255, atol=1e-6)

    # a seed augments the same way at both sizes: same flips (boxes) and same colour factors drawn
    aug = AugmentConfig(photometric=0.5, hflip=0.5)
    h, w = image.shape[-2:]
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        _, native = TrainTransforms(aug)(image, target)
        after_native = torch.rand(())
        torch.manual_seed(seed)
        _, small = TrainTransforms(aug, size)(image, target)
        assert torch.rand(()) == after_native  # as many draws, in the same order
        torch.testing.assert_close(small["boxes"].as_subclass(torch.Tensor), native["boxes"].as_subclass(torch.Tensor)
                                   * scale, atol=1e-3, rtol=1e-4)
        flips += int(not torch.equal(native["boxes"], target["boxes"]))
    assert 0 < flips < 8  # both outcomes of the flip were drawn


def test_the_fixed_part_is_computed_once_and_gives_what_the_whole_pipeline_gives(tiny_config, monkeypatch):
    import nasdet.data.dataset as dataset_module
    from nasdet.data.dataset import DECODED

    monkeypatch.setattr(DECODED, "images", {})
    monkeypatch.setattr(DECODED, "used", 0)
    monkeypatch.setattr(DECODED, "budget", 0)
    cfg = tiny_config()
    train = build_datasets(cfg, need=("train",))["train"]
    DECODED.configure(0)  # the references decode every image
    ds = train.with_transforms(train.transforms.at_size(72))
    assert ds.transforms.fixed is not None
    # the same steps called as one Compose, image by image (what the loader ran before)
    whole = train.with_transforms(lambda image, target: ds.transforms(image, target))

    def items(dataset, seed: int):
        torch.manual_seed(seed)
        return [dataset[i] for i in range(4)], torch.rand(())

    def same(a, b) -> None:
        (items_a, after_a), (items_b, after_b) = a, b
        assert after_a == after_b  # as many random draws
        for (image_a, target_a), (image_b, target_b) in zip(items_a, items_b):
            assert torch.equal(image_a, image_b) and type(image_a) is type(image_b)
            assert target_a.keys() == target_b.keys() and target_a["image_id"] == target_b["image_id"]
            assert torch.equal(target_a["labels"], target_b["labels"])
            assert torch.equal(target_a["boxes"], target_b["boxes"])
            assert target_a["boxes"].canvas_size == target_b["boxes"].canvas_size == (72, 72)

    references = [items(whole, seed) for seed in (0, 1)]
    assert DECODED.images == {}
    same(items(ds, 0), references[0])  # cache off: the fixed part runs each time
    DECODED.configure(64)
    first = items(ds, 0)
    same(first, references[0])
    # the fixed results are kept, not the decoded images, and later epochs neither decode nor resize
    assert len(DECODED.images) == 4 and all(key[3] == ("train_fixed", 72) for key in DECODED.images)
    with monkeypatch.context() as patch:
        patch.setattr(dataset_module, "decode_upright_rgb", lambda im: pytest.fail("decoded again"))
        patch.setattr(ds.transforms.fixed, "forward", lambda *a: pytest.fail("fixed part run again"))
        for image, target in first[0]:  # a caller changing its item does not change the kept one
            image[:] = 0
            target["boxes"][:] = 0
            target["labels"][:] = 0
        same(items(ds, 0), references[0])
        same(items(ds, 1), references[1])
    # the same file annotated otherwise (another data set, another annotation file) is not served the kept boxes
    record = ds.records[0]
    assert len(record.labels) and ds.num_classes > 1
    relabelled = dataclasses.replace(record, labels=record.labels % ds.num_classes + 1)
    other = DetectionDataset([relabelled], ds.classes, source="relabelled", transforms=ds.transforms)
    expected = ds.transforms.fixed(other.load_image(0, keep=False), other.target(0))[1]["labels"]
    assert not torch.equal(expected, references[0][0][0][1]["labels"])
    assert torch.equal(other[0][1]["labels"], expected)
    assert len(DECODED.images) == 5


def test_each_trainer_resizes_to_the_largest_size_its_steps_use(tiny_config, tmp_path):
    from nasdet.models.supernet import build_supernet
    from nasdet.train.loop import Trainer
    from nasdet.train.supernet import SupernetTrainer

    def resize_of(trainer) -> list[int] | None:
        found = [t.size for t in trainer.train_set.transforms.transforms if isinstance(t, v2.Resize)]
        return found[0] if found else None

    cfg = tiny_config()
    train = build_datasets(cfg, need=("train",))["train"]
    model = build_detector(cfg.model, num_classes=train.num_classes)
    trainer = Trainer.from_config(cfg, model, train, None, tmp_path / "a")
    assert resize_of(trainer) == [96, 96]
    assert train.transforms.size is None  # the data set the stage passed in is left as it was
    trainer.lock.release()

    yolo = tiny_config("yolov3", model={"multiscale_sizes": [64, 128]})
    model = build_detector(yolo.model, num_classes=train.num_classes)
    trainer = Trainer.from_config(yolo, model, train, None, tmp_path / "b")
    assert resize_of(trainer) == [128, 128]
    trainer.lock.release()

    off = tiny_config(data={"augment": {"at_train_size": False}})
    trainer = Trainer.from_config(off, build_detector(off.model, num_classes=train.num_classes),
                                  build_datasets(off, need=("train",))["train"], None, tmp_path / "c")
    assert resize_of(trainer) is None
    trainer.lock.release()

    multi = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}, "input_size": 112},
                        supernet={"input_sizes": [64, 112], "multi_resolution": True})
    model, space = build_supernet(multi, train.num_classes)
    trainer = SupernetTrainer.from_config(multi, model, space, train, None, tmp_path / "d")
    assert resize_of(trainer) == [112, 112]
    trainer.lock.release()


def test_a_multi_resolution_loader_resizes_each_batch_once_to_its_steps_size(tiny_config, tmp_path):
    """A multi-resolution supernet's batches come at the size their step draws (the step number gives it), each
    image resized once from the decoded one, as the data set at that size gives it; one-size trainers unchanged."""
    from nasdet.models.supernet import INPUT_SIZE, build_supernet
    from nasdet.train.loop import SizedBatchSampler
    from nasdet.train.supernet import SupernetTrainer

    multi = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}, "input_size": 112},
                        data={"augment": {"photometric": 0.5, "hflip": 0.5}}, train={"batch_size": 2},
                        supernet={"input_sizes": [64, 112], "multi_resolution": True})
    train = build_datasets(multi, need=("train",))["train"]
    model, space = build_supernet(multi, train.num_classes)
    trainer = SupernetTrainer.from_config(multi, model, space, train, None, tmp_path / "d")
    trainer.step, trainer.epoch = 5, 1  # as a resumed run's loader starts: batch j is step 5 + j
    trainer.sampler.set_epoch(1, 2 * 2)
    loader = trainer._loader()
    assert isinstance(loader.batch_sampler, SizedBatchSampler)
    got = [images[0].shape[-2:] for images, _ in loader]
    want = [(trainer.step_archs(5 + j, 1)[0][INPUT_SIZE],) * 2 for j in range(len(got))]
    assert got == want and {s[0] for s in got} == {64, 112} and len(got) == trainer.steps_per_epoch - 2
    # an item at a size: the decoded image resized once, the same random draws as the data set at that size
    small = trainer.train_set.with_transforms(trainer.train_set.transforms.at_size(64))
    assert trainer.train_set.transforms.size == 112
    for i in range(3):
        torch.manual_seed(i)
        image, target = trainer.train_set[(i, 64)]
        torch.manual_seed(i)
        ref_image, ref_target = small[i]
        assert image.shape[-2:] == (64, 64) and torch.equal(image, ref_image)
        assert torch.equal(target["boxes"], ref_target["boxes"]) and torch.equal(target["labels"], ref_target["labels"])
    trainer.lock.release()

    one = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}, "input_size": 112},
                      supernet={"input_sizes": [64, 112], "multi_resolution": False})
    model, space = build_supernet(one, train.num_classes)
    trainer = SupernetTrainer.from_config(one, model, space, train, None, tmp_path / "e")
    assert not isinstance(trainer._loader().batch_sampler, SizedBatchSampler)
    trainer.lock.release()


def test_hue_shift_of_uint8_images_gives_torchvisions_bits():
    # a third of each channel's levels (all 2^24 colours at each factor: checked once, 30 s), at the ends of the
    # range, around 0 and at arbitrary factors
    levels = torch.cat([torch.arange(0, 256, 3), torch.tensor([1, 254, 255])])
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).to(torch.uint8).view(3, len(levels), -1)
    for factor in (-0.5, -0.31, -1e-7, 0.0, 1e-9, 0.05, 0.26, 0.5):
        assert torch.equal(adjust_hue_uint8(grid, factor), F.adjust_hue(grid, factor)), factor
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):  # odd sizes; few levels (ties between channels); near-greys
        h, w = (int(v) for v in torch.randint(1, 90, (2,), generator=gen))
        if trial % 3 == 0:
            image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
        elif trial % 3 == 1:
            image = (torch.randint(0, 4, (3, h, w), generator=gen) * 85).to(torch.uint8)
        else:
            image = torch.randint(0, 255, (1, h, w), generator=gen, dtype=torch.uint8).expand(3, h, w).clone()
            image[trial % 3, ::2] += 1
        factor = float(torch.rand((), generator=gen)) - 0.5
        assert torch.equal(adjust_hue_uint8(image, factor), F.adjust_hue(image, factor))
    with pytest.raises(ValueError, match="hue_factor"):
        adjust_hue_uint8(image, 0.6)
    with pytest.raises(TypeError, match="uint8 RGB image"):  # a float image was scaled in place, its output zeros
        adjust_hue_uint8(image.float() / 255, 0.1)
    meta = torch.empty(3, 8, 8, dtype=torch.uint8, device="meta")  # tables follow the image (they were CPU-only)
    assert adjust_hue_uint8(meta, 0.1).device.type == "meta"


def test_photometric_distort_draws_and_outputs_as_torchvisions():
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 40 + i, 57), generator=gen, dtype=torch.uint8) for i in range(40)]
    for p in (1.0, 0.3):
        ours, theirs = PhotometricDistort(p=p), v2.RandomPhotometricDistort(p=p)
        for wrap in (tv_tensors.Image, lambda x: x, lambda x: tv_tensors.Image(x.float() / 255)):
            torch.manual_seed(7)
            a = [ours(wrap(x)) for x in images]
            after_ours = torch.rand(())
            torch.manual_seed(7)
            b = [theirs(wrap(x)) for x in images]
            assert all(type(u) is type(v) and torch.equal(u, v) for u, v in zip(a, b))
            assert torch.rand(()) == after_ours  # the same draws, so a seed augments the same way
        boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2.0, 30.0, 20.0]]), format="XYXY", canvas_size=(40, 57))
        target = {"boxes": boxes, "labels": torch.tensor([3]), "image_id": 5}
        torch.manual_seed(8)
        a = [ours(tv_tensors.Image(x[:, :40]), target) for x in images]  # the image alone distorted
        torch.manual_seed(8)
        b = [theirs(tv_tensors.Image(x[:, :40]), target) for x in images]
        for (ia, ta), (ib, tb) in zip(a, b):
            assert type(ia) is tv_tensors.Image and torch.equal(ia, ib) and ta.keys() == tb.keys()
            assert ta is target  # the target passed through as it is
            assert type(ta["boxes"]) is type(tb["boxes"]) and torch.equal(ta["boxes"], tb["boxes"])
            assert torch.equal(ta["labels"], tb["labels"]) and ta["image_id"] == tb["image_id"]
        # an image inside the target is distorted too, as torchvision does (the shortcut skipped it)
        with_image = {"boxes": boxes, "other": tv_tensors.Image(images[0][:, :40])}
        torch.manual_seed(9)
        a = ours(tv_tensors.Image(images[1][:, :40]), with_image)
        torch.manual_seed(9)
        b = theirs(tv_tensors.Image(images[1][:, :40]), with_image)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["other"], b[1]["other"])
