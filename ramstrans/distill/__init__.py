"""Teachers: a frozen trained model (a CNN, or a RAMS-Trans single pass or fusion) and its loss, and the zoom as scale
1's own teacher (scale self-distillation)."""
