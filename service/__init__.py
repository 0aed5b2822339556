"""CuratorNet recommendation service: FastAPI + ONNX Runtime + FAISS, no TensorFlow."""
