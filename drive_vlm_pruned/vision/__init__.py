"""Vision-encoder backends: eager torch, torch.compile, ONNX Runtime and TensorRT."""
