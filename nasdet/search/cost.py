"""Moved to ``nasdet.models.cost``: a model's cost is measured below the search layer (stages use it too)."""
from ..models.cost import (count_macs, count_params, detector_macs, detector_params, measure_latency,  # noqa: F401
                           measure_latency_onnx, onnx_session, time_session, _threads)
