from .detectors import DETECTORS, build_detector, dense_forward, get_input_size, set_input_size

__all__ = ["DETECTORS", "build_detector", "dense_forward", "get_input_size", "set_input_size"]
