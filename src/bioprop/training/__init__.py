"""Training loop, run configuration, checkpoints and result summaries."""

from bioprop.training.config import AdamConfig, TrainConfig
from bioprop.training.results import summarize
from bioprop.training.trainer import Trainer, evaluate, train

__all__ = ["AdamConfig", "TrainConfig", "Trainer", "evaluate", "summarize", "train"]
