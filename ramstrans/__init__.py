"""ramstrans: RAMS-Trans (ACM MM 2021) fine-grained recognition on timm ViTs."""
from .losses import MultiScaleLoss
from .models import RAMSTrans, create_model

__version__ = "0.1.0"
__all__ = ["RAMSTrans", "create_model", "MultiScaleLoss", "__version__"]
