"""Model pieces, in data order: backbone (a registered family's: ``backbones/``) -> saliency -> proposal -> RAMSTrans
(and a plain timm Classifier, the teacher); ``build_backbone`` / ``build_model`` map the config."""

from ramstrans.models.backbones.base import Backbone, Features, ZoomBackbone
from ramstrans.models.backbones.create import create_vit
from ramstrans.models.backbones.distilled import make_distilled
from ramstrans.models.backbones.inputs import InputNorm
from ramstrans.models.backbones.net import NetBackbone, build_net, create_net
from ramstrans.models.backbones.vit import ViTBackbone, build_vit
from ramstrans.models.build import (
    Model,
    build_backbone,
    build_model,
    create_model,
    load_model_state,
    model_from_checkpoint,
    weights_used,
)
from ramstrans.models.classifier import Classifier
from ramstrans.models.gate import ZoomGate, fit_zoom_gate
from ramstrans.models.outputs import (
    MultiScaleForward,
    MultiScaleOutput,
    Prediction,
    Proposal,
    fuse_probs,
    fused_log_probs,
    zoom_confidence,
)
from ramstrans.models.proposal import (
    component_boxes,
    component_labels,
    compose_boxes,
    crop_and_zoom,
    largest_component,
    threshold_rollout,
)
from ramstrans.models.rams import RAMSTrans
from ramstrans.models.rollout import attention_rollout
from ramstrans.models.testtime import ZOOM_CRITERIA, Predictor, ZoomCriterion

__all__ = [
    "Backbone",
    "ZoomBackbone",
    "ViTBackbone",
    "NetBackbone",
    "Features",
    "create_vit",
    "create_net",
    "build_vit",
    "build_net",
    "build_backbone",
    "build_model",
    "create_model",
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
    "zoom_confidence",
    "attention_rollout",
    "component_labels",
    "Classifier",
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
