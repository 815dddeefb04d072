"""Training loop, run configuration, checkpoints and result summaries."""

from bioprop.training.config import AdamConfig, OptimizerConfig, TrainConfig
from bioprop.training.results import summarize, without_timings
from bioprop.training.evaluation import evaluate
from bioprop.training.callbacks import Callback, StepEvent
from bioprop.training.interrupt import TrainingInterrupted
from bioprop.training.trainer import DivergenceError, Trainer, train

__all__ = ["AdamConfig", "Callback", "DivergenceError", "OptimizerConfig", "StepEvent", "TrainConfig", "Trainer",
           "TrainingInterrupted", "evaluate", "summarize", "train", "without_timings"]
