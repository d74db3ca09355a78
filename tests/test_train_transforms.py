"""Training augmentation at the training resolution: the loader's resize is the model's own, the random
draws keep their order, and each trainer resizes to the largest size its steps use."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from nasdet.config import AugmentConfig
from nasdet.data.build import build_datasets
from nasdet.data.transforms import TrainTransforms, build_train_transforms, to_model_input
from nasdet.models import build_detector
from nasdet.models.detectors import set_input_size


def _steps(tf) -> list[str]:
    return [type(t).__name__ for t in tf.transforms]


def test_resize_comes_after_the_canvas_ops_and_before_the_colour_ops():
    aug = AugmentConfig(photometric=0.5, zoom_out=0.5, iou_crop=True, hflip=0.5)
    assert _steps(build_train_transforms(aug)) == [
        "DropCrowd", "RandomPhotometricDistort", "RandomZoomOut", "IoUCropIfBoxes", "RandomHorizontalFlip",
        "SanitizeBoundingBoxes"]  # native size: SSD's order
    at = build_train_transforms(aug).at_size(120)
    assert _steps(at) == ["DropCrowd", "RandomZoomOut", "IoUCropIfBoxes", "Resize", "RandomPhotometricDistort",
                          "RandomHorizontalFlip", "SanitizeBoundingBoxes"]
    assert at.transforms[3].size == [120, 120] and not at.transforms[3].antialias
    off = AugmentConfig(at_train_size=False)
    assert "Resize" not in _steps(build_train_transforms(off).at_size(120))


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

    multi = tiny_config(model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}},
                        supernet={"input_sizes": [64, 112], "multi_resolution": True})
    model, space = build_supernet(multi, train.num_classes)
    trainer = SupernetTrainer.from_config(multi, model, space, train, None, tmp_path / "d")
    assert resize_of(trainer) == [112, 112]
    trainer.lock.release()
