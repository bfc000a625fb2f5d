"""Shared fixtures: tiny timm ViTs, offline hub."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

TINY = dict(backbone="vit_tiny_patch16_224", img_size=64, depth=2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model(**overrides):
    """A 2-block ViT-Ti/16 RAMSTrans at 64 px (4x4 grid) with 5 classes."""
    from ramstrans import RAMSTrans
    kwargs = dict(TINY, num_classes=5)
    kwargs.update(overrides)
    return RAMSTrans(**kwargs)
