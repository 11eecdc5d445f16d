"""Configs, run directories and the comparison runner."""

from prismrec.experiment.config import ExperimentConfig, TrainConfig, resolve_config
from prismrec.experiment.runs import run_experiment

__all__ = ["ExperimentConfig", "TrainConfig", "resolve_config", "run_experiment"]
