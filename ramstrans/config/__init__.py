"""All settings in one tree of dataclasses; YAML files and ``--set`` overrides hold only differences.

The defaults are the paper recipe (ViT-B/16 at 448 on CUB-200-2011, SGD momentum 0.9, lr 0.03, batch 16, 500 warm-up
steps then cosine to 10,000, clip 1.0, α = 1.3). Unknown keys and values of the wrong type are errors that name the key.


Layout: ``schema`` (the dataclasses), ``rules`` (ranges and combinations), ``load`` (YAML, overrides, diffs).
"""

from ramstrans.config.load import (
    CONFIG_DIRS,
    DEFAULT_CONFIG,
    config_diff,
    config_from_dict,
    find_config,
    load_config,
    save_config,
    short_repr,
)
from ramstrans.config.rules import validate
from ramstrans.config.schema import (
    Config,
    DataConfig,
    DistillConfig,
    LossConfig,
    MixConfig,
    ModelConfig,
    SyntheticConfig,
    TrainConfig,
)
from ramstrans.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "save_config",
    "config_from_dict",
    "find_config",
    "config_diff",
    "short_repr",
    "validate",
    "CONFIG_DIRS",
    "DEFAULT_CONFIG",
    "ModelConfig",
    "SyntheticConfig",
    "DataConfig",
    "LossConfig",
    "MixConfig",
    "DistillConfig",
    "TrainConfig",
]
