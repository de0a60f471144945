"""Deployment: inference backends (eager, torch.compile, CUDA graphs, ONNX Runtime), ONNX export
of the whole inference path and its metadata, timing a backend (``bench``), and the side-by-side
backend comparison of ``fastinst bench --compare``."""
