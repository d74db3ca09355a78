"""Detection data: COCO and VOC parsers, the embedded synthetic set, transforms, splits."""
__all__ = ["DataError", "DetectionDataset", "ImageRecord", "collate_detection", "to_coco_gt"]


def __getattr__(name: str):
    # on first use: `nasdet data make-synthetic` (PIL and numpy) then starts without importing torch
    if name in __all__:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
