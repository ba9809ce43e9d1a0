"""Serving finished jobs: /predict, the Open Inference Protocol (v2), export to ONNX and TorchScript; the models loaded
once per process and the dynamic batcher."""
