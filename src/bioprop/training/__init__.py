"""Training loop, run configuration, checkpoints and result summaries."""

from bioprop.training.config import AdamConfig, OptimizerConfig, TrainConfig
from bioprop.training.results import summarize, without_timings
from bioprop.training.evaluation import evaluate
from bioprop.training.trainer import DivergenceError, Trainer, train

__all__ = ["AdamConfig", "OptimizerConfig", "DivergenceError", "TrainConfig", "Trainer", "evaluate", "summarize", "train", "without_timings"]
