"""The old import path of the stage functions (now one module per stage in ``nasdet.stages``) and of
their helpers; nothing is defined here but ``run_train``'s old signature."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .config import ExperimentConfig
from .data.build import build_datasets, load_split  # noqa: F401
from .models.supernet import build_supernet  # noqa: F401
from .stages.baseline import default_checkpoint, run_baseline, run_cost, run_eval  # noqa: F401
from .stages.common import (baseline_config, cost_table, metrics_table, subnets_table,  # noqa: F401
                            train_detector, with_train_recipe)
from .stages.pretrain import run_pretrain  # noqa: F401
from .train.trained import load_trained_model  # noqa: F401
from .workdir import BASELINE, SUPERNET, work_dir_of, write_json  # noqa: F401


def run_train(cfg: ExperimentConfig, work_dir: str | Path | None = None, stage: str = BASELINE,
              console: Console | None = None) -> dict:
    """Train the config's detector into the folder ``stage``; the baseline stage trains ``baseline_config(cfg)``."""
    if stage == BASELINE:
        return run_baseline(cfg, work_dir, console)
    return train_detector(cfg, work_dir, stage, console)
