"""ONNX export of the zoo's stereo networks, for any network of the registry with modality 'stereo'.

The exported graph takes `lr_left`, `lr_right` (B, 3, H, W), RGB in [0, 1], and returns `sr_left`, `sr_right`
(B, 3, sH, sW), not clamped, plus `disp_left`, `disp_right` (B, 1, sH, sW) in HR pixels for networks that estimate
disparity (ModelEntry.estimates_disparity): the zoo's output contract (models/outputs.py) as a fixed tuple.

The graph is traced by torch.export (`torch.onnx.export(..., dynamo=True)`) with the plain forms of every block
(`kernels.plain_forms()`): the fast forms loop over bands of rows whose number depends on the size, pick rows with
`nonzero` and run custom autograd Functions, none of which a graph can hold. The plain forms compute the same
products in another order (tests/test_vectorised.py), so the graph equals the eager network to rounding.

Sizes: fixed (the example's) or dynamic H and W. Dynamic dimensions are traced as `Dim.AUTO`: a branch on the size
(NAFSSR's TLC pools globally below its 45x135 window, locally above) narrows the accepted range to the example's
side of it, and a size the graph cannot take at all stays fixed; `accepted_sizes` reads the ranges torch.export
settled on, so the caller can say what the file accepts.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from models import kernels

INPUT_NAMES = ('lr_left', 'lr_right')
SR_NAMES = ('sr_left', 'sr_right')
DISPARITY_NAMES = ('disp_left', 'disp_right')
# ONNX operator set: 18 is what torch 2.14's exporter writes natively (older sets are converted, with a warning).
OPSET = 18
# onnxruntime must equal PyTorch within TOLERANCE (float32): absolute for the SR images (values in [0, 1]); for the
# disparities (HR pixels, up to 192) relative to their largest value, because float32 rounding alone moves them by
# more than 1e-4 px: on a 30x64 Motorcycle crop SSRDE-FNet's fast and plain PyTorch forms differ by 7e-4 px, and
# each is 4e-4 to 1e-3 px from the float64 network (the disparity is a column minus a matched column near 256).
TOLERANCE = 1e-4


def tolerance(name: str, reference: Tensor) -> float:
    """The largest difference allowed between onnxruntime's output `name` and PyTorch's `reference`."""
    if name in DISPARITY_NAMES:
        return TOLERANCE * max(1.0, float(reference.abs().max()))
    return TOLERANCE


class ExportedStereo(nn.Module):
    """A stereo network of the zoo with a graph's interface: (lr_left, lr_right) -> tuple of tensors named
    `output_names(disparity)`. `disparity`: also return the network's disp_left, disp_right."""

    def __init__(self, network: nn.Module, disparity: bool):
        super().__init__()
        self.network = network
        self.disparity = disparity

    def forward(self, lr_left: Tensor, lr_right: Tensor) -> tuple[Tensor, ...]:
        out = self.network(lr_left, lr_right)
        if self.disparity:
            return out.sr_left, out.sr_right, out.disp_left, out.disp_right
        return out.sr_left, out.sr_right


def output_names(disparity: bool) -> tuple[str, ...]:
    return SR_NAMES + (DISPARITY_NAMES if disparity else ())


def dynamic_shapes() -> tuple[dict, dict]:
    """H and W of both inputs dynamic, the batch fixed; torch.export finds the ranges (see the module docstring)."""
    spec = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    return spec, spec


def export_onnx(network: nn.Module, path: str | Path, left: Tensor, right: Tensor, disparity: bool,
                dynamic: bool = False, optimize: bool = True) -> torch.onnx.ONNXProgram:
    """Trace `network` (eval mode) on the example pair `left`, `right` (B, 3, H, W) and write the ONNX graph to `path`
    (one file, weights inside). Returns the ONNXProgram (its `exported_program` says which sizes it accepts).
    `optimize`: onnxscript's graph optimiser (constant folding, shared initialisers), about half of the export time;
    onnxruntime optimises the graph again when it loads it. A network with a `prepare_export(height, width)` method
    is prepared first and stays so, so that PyTorch then computes what the graph does (SCGLANet: fix_hashing)."""
    prepare = getattr(network, 'prepare_export', None)
    if prepare is not None:     # a network that draws at random per forward fixes its draws (SCGLANet's hashing)
        prepare(*left.shape[-2:])
    wrapper = ExportedStereo(network, disparity).eval()
    with kernels.plain_forms(), torch.no_grad():
        program = torch.onnx.export(wrapper, (left, right), dynamo=True, opset_version=OPSET,
                                    input_names=list(INPUT_NAMES), output_names=list(output_names(disparity)),
                                    dynamic_shapes=dynamic_shapes() if dynamic else None, optimize=optimize,
                                    verbose=False)
    program.save(str(path), external_data=False)
    return program


def accepted_sizes(program: torch.onnx.ONNXProgram) -> tuple[tuple[int, int | float], tuple[int, int | float]]:
    """((min H, max H), (min W, max W)) of the LR inputs the exported graph accepts (max may be math.inf); equal
    bounds for a fixed dimension."""
    exported = program.exported_program
    shape = next(node for node in exported.graph.nodes if node.op == 'placeholder'
                 and node.name == INPUT_NAMES[0]).meta['val'].shape
    ranges = []
    for size in shape[2:]:
        if isinstance(size, int):
            ranges.append((size, size))
            continue
        bounds = exported.range_constraints[size.node.expr]
        unbounded = bool(bounds.upper >= 2 ** 62)        # torch's int_oo (whose is_infinite is False) or a huge bound
        ranges.append((int(bounds.lower), math.inf if unbounded else int(bounds.upper)))
    return tuple(ranges)
