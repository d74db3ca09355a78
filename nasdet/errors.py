"""The errors nasdet raises on purpose. The CLI prints one line for a ``NasdetError`` (the message names
the file, key or value at fault) and a full traceback for anything else, which is a bug.

Each class also derives from the builtin the code raised before (ValueError, FileNotFoundError,
RuntimeError), so ``except ValueError`` in callers keeps working.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path


WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class NasdetError(Exception):
    """Base of every error caused by the user's input or environment, not by a bug in nasdet."""

    exit_code = 2  # bad input; 1 for a run that worked but whose result failed a check
    label = "error"

    def __init__(self, *args):
        # torch's DataLoader re-raises a worker's exception as ``type(msg)`` where msg is the worker's whole
        # traceback; keep the original one-line message, and the traceback for NASDET_DEBUG readers.
        self.worker_traceback = None
        if len(args) == 1 and isinstance(args[0], str) and WORKER_TRACEBACK in args[0]:
            self.worker_traceback = args[0]
            last = args[0].rstrip().splitlines()[-1]
            head, sep, message = last.partition(": ")
            args = (message if sep and re.fullmatch(r"[\w.]+", head) else last,)
        super().__init__(*args)


class ConfigError(NasdetError, ValueError):
    """A config file, override or option that does not validate; the message names the file and key path."""


class ArchError(ConfigError):
    """An arch (or a restriction) that does not fit its search space; the message names what and why."""


class GenotypeError(ConfigError):
    """A genotype that cannot be parsed or built; the message names the bad op or input index."""


class NoArchUnderCost(NasdetError, RuntimeError):
    """``sample_under`` found no arch under the cost limit."""


class DataError(NasdetError, ValueError):
    """Bad input data; the message names the file and the id (image or annotation) at fault."""


class CheckpointError(NasdetError, ValueError):
    """A checkpoint that is missing, unreadable or from another model / search space."""


class PretrainedWeightsUnavailable(CheckpointError):
    """Named pretrained weights (``model.backbone.pretrained``) that are neither in the download cache nor
    downloadable; the message names the file and the folder to put it in."""


class StageOrderError(NasdetError, FileNotFoundError):
    """A stage needs the output of an earlier one that has not run (the message names the stage to run)."""


StageOutputMissing = StageOrderError  # the name tune/export used first


class MissingCheckpoint(StageOrderError, CheckpointError):
    """A stage's checkpoint is not there: the earlier stage has not run (both a stage-order and a checkpoint
    error, so callers catching either keep working)."""


class EnvironmentProblem(NasdetError, RuntimeError):
    """The machine cannot do what the config asks (no CUDA, a storage driver not installed, ...)."""


class WorkDirBusy(NasdetError, RuntimeError):
    """Another process is writing the same stage folder (the message names its pid)."""


class ResumeMismatch(CheckpointError):
    """A rerun whose training-relevant config differs from the one its checkpoint was trained with."""


class TrainingDiverged(NasdetError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept untouched."""


class ExportParityError(NasdetError, RuntimeError):
    """onnxruntime's outputs differ from torch's beyond the configured tolerance."""

    exit_code = 1  # the export ran but its file is wrong: a failure, not bad input
    label = "export check failed"


class QuantizationError(NasdetError, RuntimeError):
    """An exported detector that onnxruntime cannot quantize to INT8 (the message names the node and op)."""


def unreadable_reason(e: Exception, path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's own text runs to
    a dozen lines for a pickle that would run code)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # torch.save's zip, or a legacy pickle
        return "it is not a torch checkpoint (neither torch.save's zip archive nor a pickle)"
    if isinstance(e, pickle.UnpicklingError):
        return ("it holds Python objects other than tensors, which weights-only loading refuses to run "
                "(save a plain state_dict with torch.save)")
    if isinstance(e, EOFError):
        return "the file is truncated"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"the file is truncated or not a torch checkpoint ({first})"
