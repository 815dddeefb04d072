"""Model registry: the paper's networks by name (see :mod:`bioprop.models.zoo`).

``Conv2dSame`` lives in :mod:`bioprop.nn` with the other layer types; it is re-exported here, where
it was first published."""

from bioprop.models.network import Block, Network
from bioprop.models.zoo import MODELS, LayerSpec, build_network, create_model, list_models, model_factory
from bioprop.nn import Conv2dSame

__all__ = ["MODELS", "Block", "Conv2dSame", "LayerSpec", "Network", "build_network", "create_model", "list_models", "model_factory"]
