"""The distilled transformer's optional blocks given to timm's ViT: window attention, the convolutional feed-forward
and the feature-wise transformation."""
