"""Model registry: the paper's networks by name (see :mod:`bioprop.models.zoo`)."""

from bioprop.models.network import Block, Conv2dSame, Network
from bioprop.models.zoo import MODELS, LayerSpec, build_network, create_model, list_models, model_factory

__all__ = ["MODELS", "Block", "Conv2dSame", "LayerSpec", "Network", "build_network", "create_model", "list_models", "model_factory"]
