"""The old import path of the tune stage (now ``nasdet.stages.tune``) and the models it loads."""
from .errors import StageOutputMissing  # noqa: F401
from .stages.tune import (TuneTrainer, baseline_checkpoint, resolve_genotype_arch, resolve_tune_arch,  # noqa: F401
                          run_tune, supernet_checkpoint)
from .train.bn import recalibrate_static  # noqa: F401
from .train.trained import build_static_model, build_tuned_model, load_tuned_model  # noqa: F401
from .workdir import SEARCH, TUNE  # noqa: F401
