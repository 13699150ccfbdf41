"""Linear layers with their bias (and GELU) inside the matrix product, for evaluation on the CPU.

``F.linear`` on the CPU first copies the bias into every row of the output and then
adds the product to it, and ``GELU`` reads and writes that output once more: two extra
passes over the largest activations of a block (the 16 x 1025 x 512 feed-forward hidden
layer is 34 MB). oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``, the
kernel torch's own compiler emits for CPU linear layers) applies bias and GELU while it
writes the product. It has no backward, so it is used only where autograd is off
(evaluation, ``torch.no_grad``, ``torch.inference_mode``), on float32 CPU tensors outside
autocast, and where this torch build has it (should the kernel fail, it is not tried again);
everywhere else the layers run as usual.
``tests/test_fast_paths.py`` checks both paths give the same outputs.

Set ``ENABLED = False`` to turn it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENABLED = True

try:
    _linear_pointwise = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):  # a torch build without oneDNN's linear
    _linear_pointwise = None


def usable(x: Tensor, layer: nn.Linear) -> bool:
    """Whether :func:`linear` takes the oneDNN kernel for this input and layer."""
    return (
        ENABLED
        and _linear_pointwise is not None
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and layer.weight.dtype == torch.float32
        and (layer.bias is None or layer.bias.dtype == torch.float32)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: Tensor, layer: nn.Linear, activation: str = "none") -> Tensor:
    """``activation(layer(x))`` for ``activation`` in ``"none"``, ``"gelu"`` (exact, erf), fused where :func:`usable`."""
    if activation not in ("none", "gelu"):
        raise ValueError(f"activation must be 'none' or 'gelu', not {activation!r}")
    global _linear_pointwise
    if usable(x, layer):
        try:
            return _linear_pointwise(x, layer.weight, layer.bias, activation, [], "none" if activation == "gelu" else "")
        except (RuntimeError, NotImplementedError):  # a build or CPU whose oneDNN lacks it: the ordinary layers from now on
            _linear_pointwise = None
    out = layer(x)
    return F.gelu(out) if activation == "gelu" else out
