"""Deployment: DRSformer as an ONNX or torch.export (pt2) file, checked against PyTorch, and run outside it.

- :mod:`.graph`: the traced module (pad-to-8 and crop inside the graph, any H x W), and the two exporters.
- :mod:`.runtime`: exported files as callables on NCHW tensors (ONNX Runtime, ``torch.export.load``).
- :mod:`.verify`: run a file at sizes other than the traced one and compare with the PyTorch model.
"""
