"""bioprop: biologically-motivated learning rules at scale.

The Python API mirrors the command line::

    import bioprop
    from bioprop.data import DataConfig

    model = bioprop.create_model("mnist-fc")              # any registered network
    rule = bioprop.create_rule("fa", model, seed=0)       # any registered rule wraps any model
    config = bioprop.TrainConfig(data=DataConfig("mnist"), model="mnist-fc", rule="fa", epochs=20)
    result = bioprop.train(config, out="runs/fa")         # -> {"rule", "metrics", "summary"}
    resnet = bioprop.wrap(my_resnet, rule="kp")           # a rule on any nn.Module (feedback rules, DFA), in place
    rule = bioprop.rule_of(resnet)                        # its rule; bioprop.unwrap(resnet) makes it plain again
    rule = bioprop.create_rule("dtp", model, task=bioprop.LossTask(my_loss))   # your own loss

Your own training loop with any rule (``parameter_groups``, ``passes``, ``compute_gradients``):
``docs/own-loop.md`` and ``examples/own_loop_*.py``.
"""

from bioprop.data import DataConfig, load_data
from bioprop.errors import BiopropError
from bioprop.models import create_model, list_models
from bioprop.rules import create_rule, list_rules
from bioprop.tasks import LossTask, Task
from bioprop.training import AdamConfig, TrainConfig, Trainer, evaluate, train
from bioprop.wrap import rule_of, unwrap, wrap

__version__ = "0.1.0"

__all__ = ["AdamConfig", "BiopropError", "DataConfig", "LossTask", "Task", "TrainConfig", "Trainer", "create_model",
           "create_rule", "evaluate", "list_models", "list_rules", "load_data", "rule_of", "train", "unwrap",
           "wrap"]
