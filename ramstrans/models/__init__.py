"""Model pieces, in data order: backbone -> rollout -> proposal -> RAMSTrans."""
from .backbone import ViTBackbone, ViTFeatures
from .pretrained import load_pretrained
from .proposal import component_boxes, compose_boxes, crop_and_zoom, largest_component, threshold_rollout
from .rams import MultiScaleOutput, Proposal, RAMSTrans, create_model
from .rollout import attention_rollout
