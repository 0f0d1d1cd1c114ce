"""Getting models out of tinyfn, and weights in: ONNX models, safetensors files, PyTorch weights.

* :func:`to_onnx` (:mod:`tinyfn.export.onnx`): trace an inference function and write an ONNX
  model that onnxruntime runs (needs the ``onnx`` extra).
* :func:`save_safetensors`, :func:`load_safetensors` (:mod:`tinyfn.export.safetensors`): a
  parameter tree as a safetensors file, read and written with numpy alone.
* :func:`params_from_torch` (:mod:`tinyfn.export.torch_weights`): a PyTorch ``state_dict`` of
  Linear, Conv2d, LayerNorm and Embedding layers as the params of the matching tinyfn model.

Each submodule imports its optional dependency only inside the functions that need it.
"""

from .onnx import ExportError, to_onnx
from .safetensors import load_safetensors, save_safetensors
from .torch_weights import params_from_torch

__all__ = ["ExportError", "to_onnx", "save_safetensors", "load_safetensors", "params_from_torch"]
