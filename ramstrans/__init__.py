"""ramstrans: RAMS-Trans (ACM MM 2021) fine-grained recognition on timm ViTs.

The public names are imported on first use, so that ``import ramstrans`` (and ``ramstrans --help``) does not import
torch or timm.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "RAMSTrans",
    "Classifier",
    "create_model",
    "load_config",
    "MultiScaleLoss",
    "DistillationLoss",
    "build_criterion",
    "Teacher",
    "load_teacher",
    "load_checkpoint",
    "model_from_checkpoint",
    "__version__",
]

_WHERE = {
    "RAMSTrans": ".models",
    "Classifier": ".models",
    "create_model": ".models",
    "load_config": ".config",
    "MultiScaleLoss": ".losses",
    "DistillationLoss": ".losses",
    "build_criterion": ".losses",
    "Teacher": ".teacher",
    "load_teacher": ".teacher",
    "load_checkpoint": ".checkpoint",
    "model_from_checkpoint": ".checkpoint",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ramstrans' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
