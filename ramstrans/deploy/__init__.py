"""What runs without torch: decoding image files, the test-time preprocessing an export records, and the
onnxruntime model behind ``ramstrans predict model.onnx``. ``ramstrans.data`` decodes through ``deploy.images`` too, so
training, evaluation and a deployed model read pixels identically. Nothing here imports torch, timm or
albumentations (a test checks it in a fresh process)."""
