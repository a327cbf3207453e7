"""Split points of a SplittableModel: activation shape, bytes and measured FLOPs per split.

FLOPs are measured with torch's FlopCounterMode, which counts only convolutions and matrix
multiplications (2 FLOPs per multiply-add); BatchNorm, activations, pooling and additions are free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .core import SplittableModel
from .zoo import check_input_shape

BYTES_PER_FP32 = 4
# Measured at batch 2 and halved: train-mode BatchNorm rejects one value per channel, and
# conv/matmul FLOPs (forward and weight gradients alike) are linear in the batch size.
MEASURE_BATCH = 2


@dataclass(frozen=True)
class SplitPoint:
    """What splitting after the first `index` units costs, per sample.

    `name` is the last client unit ("input" for index 0); `shape` is the activation (C, H, W) sent.
    FLOPs are forward-only (`*_flops`) or forward+backward (`*_train_flops`).
    """

    index: int
    name: str
    shape: tuple[int, int, int]
    bytes_per_sample_fp32: int
    client_flops: int
    server_flops: int
    client_train_flops: int
    server_train_flops: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (shape as a list)."""
        row = asdict(self)
        row["shape"] = list(self.shape)
        return row


def _conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: Any,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    # torch's own formula ignores `groups` for the weight gradient and overcounts depthwise convs
    # by their channel count; each of grad-input and grad-weight costs exactly one forward conv.
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


_FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


def flop_counter() -> FlopCounterMode:
    """The one FLOP counter of splitray: torch's, with grouped-conv backward counted right."""
    return FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS)


def _meta_state(unit: nn.Module) -> dict[str, torch.Tensor]:
    """Meta-device stand-ins for the unit's parameters and buffers: shapes only, no compute."""
    state = {
        name: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
        for name, p in unit.named_parameters()
    }
    state.update(
        {name: torch.empty_like(b, device="meta") for name, b in unit.named_buffers()}
    )
    return state


def _measure_unit(
    unit: nn.Module, in_shape: tuple[int, ...], input_requires_grad: bool
) -> tuple[tuple[int, ...], int, int]:
    """Output shape, forward FLOPs and forward+backward FLOPs of one unit at MEASURE_BATCH.

    Runs on meta tensors through functional_call, so it costs no arithmetic and leaves the real
    parameters and BatchNorm statistics untouched. The input gradient is only computed (and
    counted) when `input_requires_grad`, as autograd would in a real run.
    """
    state = _meta_state(unit)
    was_training = [m.training for m in unit.modules()]
    try:
        unit.eval()
        with torch.no_grad(), flop_counter() as fc:
            out = functional_call(unit, state, (torch.empty(in_shape, device="meta"),))
        forward = fc.get_total_flops()
        unit.train()
        x = torch.empty(in_shape, device="meta", requires_grad=input_requires_grad)
        with flop_counter() as fc:
            train_out = functional_call(unit, state, (x,))
            if train_out.requires_grad:
                train_out.sum().backward()
        train = fc.get_total_flops()
    finally:
        for module, training in zip(unit.modules(), was_training, strict=True):
            module.training = training
    return tuple(out.shape), forward, train


def split_points(model: SplittableModel, input_shape: tuple[int, int, int]) -> list[SplitPoint]:
    """Every split point n = 0..len(units)-1 of `model` for one input of `input_shape` (C, H, W).

    Each unit is measured once (on shapes only, no real compute) and the costs are summed per side;
    FLOPs cover convolutions and matrix multiplications only (FlopCounterMode's scope).
    A unit's input needs a gradient exactly when some earlier unit has trainable parameters,
    whichever side it runs on, so client + server FLOPs equal the whole model's, forward and train.
    """
    shape: tuple[int, ...] = (MEASURE_BATCH, *check_input_shape(input_shape))
    shapes = [shape]
    forward_flops: list[int] = []
    train_flops: list[int] = []
    grad_flows = False
    for unit in model.units:
        shape, forward, train = _measure_unit(unit, shape, grad_flows)
        shapes.append(shape)
        forward_flops.append(forward // MEASURE_BATCH)
        train_flops.append(train // MEASURE_BATCH)
        grad_flows = grad_flows or any(p.requires_grad for p in unit.parameters())

    points = []
    for n in range(len(model.units)):
        per_sample = shapes[n][1:]
        if len(per_sample) != 3:
            raise ValueError(
                f"unit {model.unit_names[n - 1]!r} outputs per-sample shape {per_sample}; "
                "only the last unit may leave (C, H, W)"
            )
        channels, height, width = per_sample
        points.append(
            SplitPoint(
                index=n,
                name=model.unit_names[n - 1] if n else "input",
                shape=(channels, height, width),
                bytes_per_sample_fp32=BYTES_PER_FP32 * channels * height * width,
                client_flops=sum(forward_flops[:n]),
                server_flops=sum(forward_flops[n:]),
                client_train_flops=sum(train_flops[:n]),
                server_train_flops=sum(train_flops[n:]),
            )
        )
    return points


def format_split_points_table(points: list[SplitPoint]) -> str:
    """Aligned text table of split points (FLOPs in MFLOP per sample) for the command line."""
    header = (
        "n", "name", "shape", "bytes/sample", "client MFLOP", "server MFLOP",
        "client train MFLOP", "server train MFLOP",
    )
    rows = [header]
    for p in points:
        rows.append((
            str(p.index),
            p.name,
            "x".join(str(d) for d in p.shape),
            f"{p.bytes_per_sample_fp32:,}",
            f"{p.client_flops / 1e6:,.2f}",
            f"{p.server_flops / 1e6:,.2f}",
            f"{p.client_train_flops / 1e6:,.2f}",
            f"{p.server_train_flops / 1e6:,.2f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left_aligned = {1, 2}
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i in left_aligned else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
