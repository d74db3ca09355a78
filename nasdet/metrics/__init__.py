from .coco import COCO_METRIC_NAMES, coco_evaluate, per_class_ap

__all__ = ["COCO_METRIC_NAMES", "coco_evaluate", "per_class_ap"]
