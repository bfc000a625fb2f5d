"""Backbones the pipeline runs: the timm ViT with scale-wise class tokens and attention capture (``vit``), any timm
classifier (``classifier.NetBackbone``), their input normalisation (``inputs``) and weight loading (``pretrained``)."""
