"""fastconv models in other frameworks' formats.

* :func:`to_torch` (:mod:`fastconv.export.torch`): a ``torch.nn.Module`` with the model's
  tree, weights, buffers, frozen flags, modes and dtype;
* :func:`save_torch_state_dict`: the state dict as a file ``torch.load`` reads.

PyTorch is optional: it is imported only when these are called.
"""

from __future__ import annotations

from .torch import save_torch_state_dict, to_torch

__all__ = ["to_torch", "save_torch_state_dict"]
