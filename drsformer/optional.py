"""Optional dependencies: imported on first use, with a one-line error naming the pip extra that provides them.

``pip install 'drsformer[export]'`` adds onnx, onnxruntime, onnxscript (the ONNX exporter's graph builder) and
safetensors; ``pip install 'drsformer[serve]'`` adds starlette, uvicorn and pillow for ``drsformer serve``.
Nothing else in the package needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependency

# module -> the extra that installs it
EXTRAS = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "starlette": "serve",
    "uvicorn": "serve",
    "PIL.Image": "serve",
}


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependency` saying which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, "export")
        raise MissingDependency(
            f"{purpose} needs the Python package {module!r}, which is not installed; "
            f"run: pip install 'drsformer[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None
