"""ramstrans: RAMS-Trans (ACM MM 2021) fine-grained recognition on timm ViTs."""
from .config import load_config
from .losses import MultiScaleLoss
from .models import RAMSTrans, create_model

__version__ = "0.1.0"
__all__ = ["RAMSTrans", "create_model", "load_config", "MultiScaleLoss", "__version__"]
