"""fastconv models in other frameworks' formats.

* :func:`to_torch` (:mod:`fastconv.export.torch`): a ``torch.nn.Module`` with the model's
  tree, weights, buffers, frozen flags, modes and dtype;
* :func:`save_torch_state_dict`: the state dict as a file ``torch.load`` reads;
* :func:`to_onnx` (:mod:`fastconv.export.onnx`): an ONNX file (opset 17, dynamic batch) of the
  model's eval-mode computation, for onnxruntime and the other runtimes.

PyTorch and onnx are optional: each is imported only when its functions are called.
"""

from __future__ import annotations

from .onnx import to_onnx
from .torch import save_torch_state_dict, to_torch

__all__ = ["to_torch", "save_torch_state_dict", "to_onnx"]
