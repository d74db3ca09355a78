from .coco import COCO_METRIC_NAMES, coco_evaluate

__all__ = ["COCO_METRIC_NAMES", "coco_evaluate"]
