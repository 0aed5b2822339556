"""What the service and the training package share, and nothing that either owns alone.

The model format both sides agree on (`model_format`, documented in docs/model-format.md) and
its loader with every check (`model_loader`), the image encoder and its one preprocessing
(`image_encoder`), the data set value (`dataset`), and the seeded synthetic market with its
painter (`synthetic`, `painter`), which the service's `--demo` and the training's `synth`
both run. It imports numpy, Pillow and ONNX Runtime only: never `service`, never `training`,
never TensorFlow (tests/test_imports.py holds that).
"""
