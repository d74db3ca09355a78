"""Detection data: COCO and VOC parsers, the embedded synthetic set, transforms, splits."""
from .dataset import DataError, DetectionDataset, ImageRecord, collate_detection, to_coco_gt

__all__ = ["DataError", "DetectionDataset", "ImageRecord", "collate_detection", "to_coco_gt"]
