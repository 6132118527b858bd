"""pytrainer's optimizers and the registry of optimizer names."""
from pytrainer.optim.adafactor import Adafactor
from pytrainer.optim.adamw import FusedAdamW
from pytrainer.optim.anyprecision import AnyPrecisionAdamW
from pytrainer.optim.factory import create_optimizer, get_decay_parameter_names
from pytrainer.optim.hf_adamw import AdamWHF
from pytrainer.optim.registry import (OptimizerConfig, build_optimizer, get_optimizer_spec,
                                      optimizer_names, register_optimizer)

__all__ = ["Adafactor", "FusedAdamW", "AnyPrecisionAdamW", "AdamWHF", "OptimizerConfig", "build_optimizer",
           "create_optimizer", "get_decay_parameter_names", "get_optimizer_spec",
           "optimizer_names", "register_optimizer"]
