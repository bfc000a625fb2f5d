"""Export targets, one module each, registered in ``ramstrans.registry.EXPORT_TARGETS`` (with the source kind that
reads their output back): ``timm`` (a folder timm loads) and ``onnx`` (a file onnxruntime runs, in fp32, fp16 or int8).
A target is an object with ``add_arguments(group)`` (its own ``ramstrans export`` options) and ``write(source, out,
scales, weights, overwrite, options) -> Path``; ``base`` holds what they share (the output check, the preprocessing
and provenance records)."""
