"""ramstrans: RAMS-Trans (ACM MM 2021) fine-grained recognition on timm ViTs.

The public names are imported on first use, so that ``import ramstrans`` (and ``ramstrans --help``) does not import
torch or timm. Module paths of earlier layouts (the flat ``ramstrans.train``, ``ramstrans.evaluate``, ...; 0.2's
``ramstrans.training.losses``) still import, as aliases of their new homes, with a DeprecationWarning; they go in the
next release (``_MOVED``).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__version__ = "0.2.0"
__all__ = [
    "RAMSTrans",
    "Classifier",
    "create_model",
    "load_config",
    "MultiScaleLoss",
    "DistillationLoss",
    "SelfDistillationLoss",
    "build_criterion",
    "Teacher",
    "load_teacher",
    "load_checkpoint",
    "model_from_checkpoint",
    "load_model",
    "build_backbone",
    "EvalRequest",
    "__version__",
]

_WHERE = {
    "RAMSTrans": "ramstrans.models",
    "Classifier": "ramstrans.models",
    "create_model": "ramstrans.models",
    "load_config": "ramstrans.config",
    "MultiScaleLoss": "ramstrans.losses",
    "DistillationLoss": "ramstrans.distill.loss",
    "SelfDistillationLoss": "ramstrans.distill.self_distill",
    "build_criterion": "ramstrans.training.build",
    "Teacher": "ramstrans.distill.teacher",
    "load_teacher": "ramstrans.distill.teacher",
    "load_checkpoint": "ramstrans.checkpoint",
    "model_from_checkpoint": "ramstrans.models.build",
    "load_model": "ramstrans.inference.load",
    "build_backbone": "ramstrans.models",
    "EvalRequest": "ramstrans.registry",
}

# Old module path -> its new home (deprecated aliases, for one release).
_MOVED = {
    "ramstrans.files": "ramstrans.runtime.files",
    "ramstrans.dist": "ramstrans.runtime.dist",
    "ramstrans.runlog": "ramstrans.runtime.runlog",
    "ramstrans.engine": "ramstrans.training.engine",
    "ramstrans.mixing": "ramstrans.training.mixing",
    "ramstrans.monitor": "ramstrans.training.monitor",
    "ramstrans.train": "ramstrans.training.run",
    "ramstrans.l2l": "ramstrans.training.l2l",
    "ramstrans.teacher": "ramstrans.distill.teacher",
    "ramstrans.evaluate": "ramstrans.inference.evaluate",
    "ramstrans.predict": "ramstrans.inference.predict",
    "ramstrans.visualize": "ramstrans.inference.visualize",
    "ramstrans.plots": "ramstrans.inference.plots",
    "ramstrans.metrics": "ramstrans.inference.metrics",
    "ramstrans.data.cub": "ramstrans.data.formats.cub",
    "ramstrans.data.dogs": "ramstrans.data.formats.dogs",
    "ramstrans.data.folder": "ramstrans.data.formats.folder",
    "ramstrans.data.inat": "ramstrans.data.formats.inat",
    "ramstrans.data.nabirds": "ramstrans.data.formats.nabirds",
    "ramstrans.data.pretext": "ramstrans.data.synthetic.pretext",
    "ramstrans.models.backbone": "ramstrans.models.backbones.vit",
    "ramstrans.models.inputs": "ramstrans.models.backbones.inputs",
    "ramstrans.models.pretrained": "ramstrans.models.backbones.pretrained",
    "ramstrans.models.attention": "ramstrans.models.blocks.attention",
    "ramstrans.models.ffn": "ramstrans.models.blocks.ffn",
    "ramstrans.models.fwt": "ramstrans.models.blocks.fwt",
    "ramstrans.training.losses": "ramstrans.losses",
    "ramstrans.runtime.runfolder": "ramstrans.training.runfolder",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new home (the same module object)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {_MOVED[spec.name]}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        module = importlib.import_module(_MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module ran when it was imported


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ramstrans' has no attribute '{name}'")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
