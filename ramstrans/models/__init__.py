"""Model pieces, in data order: backbone -> rollout -> proposal -> RAMSTrans (and a plain timm Classifier, the
teacher); ``build_model`` maps the config."""

from ramstrans.models.backbones.base import Features
from ramstrans.models.backbones.distilled import make_distilled
from ramstrans.models.backbones.inputs import InputNorm
from ramstrans.models.backbones.net import NetBackbone, create_net
from ramstrans.models.backbones.pretrained import load_pretrained
from ramstrans.models.backbones.vit import ViTBackbone, create_vit
from ramstrans.models.build import Model, build_model, load_model_state, model_from_checkpoint, weights_used
from ramstrans.models.classifier import Classifier
from ramstrans.models.gate import ZoomGate, fit_zoom_gate
from ramstrans.models.proposal import (
    component_boxes,
    component_labels,
    compose_boxes,
    crop_and_zoom,
    largest_component,
    threshold_rollout,
)
from ramstrans.models.rams import (
    ZOOM_CRITERIA,
    MultiScaleForward,
    MultiScaleOutput,
    Prediction,
    Proposal,
    RAMSTrans,
    ZoomCriterion,
    create_model,
    fuse_probs,
    fused_log_probs,
    zoom_confidence,
)
from ramstrans.models.rollout import attention_rollout
from ramstrans.models.testtime import Predictor

__all__ = [
    "ViTBackbone",
    "Features",
    "create_vit",
    "load_pretrained",
    "component_boxes",
    "compose_boxes",
    "crop_and_zoom",
    "largest_component",
    "threshold_rollout",
    "MultiScaleForward",
    "MultiScaleOutput",
    "Prediction",
    "Proposal",
    "RAMSTrans",
    "ZoomCriterion",
    "Predictor",
    "create_model",
    "zoom_confidence",
    "attention_rollout",
    "build_model",
    "component_labels",
    "Classifier",
    "NetBackbone",
    "create_net",
    "InputNorm",
    "make_distilled",
    "Model",
    "fused_log_probs",
    "fuse_probs",
    "ZoomGate",
    "fit_zoom_gate",
    "model_from_checkpoint",
    "weights_used",
    "load_model_state",
    "ZOOM_CRITERIA",
]
