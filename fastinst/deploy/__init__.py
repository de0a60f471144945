"""Deployment: inference backends (eager, torch.compile, CUDA graphs, ONNX Runtime), ONNX export
of the whole inference path, and the side-by-side backend comparison of ``fastinst bench --compare``."""
