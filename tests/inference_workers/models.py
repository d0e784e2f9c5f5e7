"""Small real models made by the tests: torch → ONNX, TorchScript, torch.export.

Nothing is downloaded; every artifact is built from a seeded torch module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from inference_workers.types import TensorSpec


class Mlp(nn.Module):
    """The reference MLP: FP32 [batch, 256] → 1024 → 1024 → 10."""

    def __init__(self, width: int = 1024, inputs: int = 256, outputs: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Doubler(nn.Module):
    """y = 2x: outputs that are easy to check, any batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def export_onnx(
    module: nn.Module,
    path: Path,
    *,
    features: int,
    input_name: str = "input",
    output_name: str = "output",
    dynamic_batch: bool = True,
) -> Path:
    """Exports ``module`` to one ONNX file with a dynamic batch axis."""
    module.eval()
    example = torch.zeros(2, features)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        dynamo=True,
    )
    return path


class Adder(nn.Module):
    """Two inputs, ``a`` and ``b``: their sum."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def adder_onnx(path: Path, *, features: int = 4) -> Path:
    """A model with two inputs (``a``, ``b``; FP32 [batch, features]) and one output."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        Adder().eval(),
        (torch.zeros(2, features), torch.zeros(2, features)),
        str(path),
        input_names=["a", "b"],
        output_names=["output"],
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
        external_data=False,
        dynamo=True,
    )
    return path


def mlp_onnx(path: Path, *, width: int = 1024) -> Path:
    """The reference MLP as ONNX (dynamic batch)."""
    return export_onnx(Mlp(width=width), path, features=256)


def doubler_onnx(path: Path, *, features: int = 4) -> Path:
    """y = 2x as ONNX (dynamic batch)."""
    return export_onnx(Doubler(), path, features=features)


def torchscript(module: nn.Module, path: Path, *, features: int) -> Path:
    """Traces ``module`` to a TorchScript archive."""
    module.eval()
    traced = torch.jit.trace(module, torch.zeros(2, features))
    traced.save(str(path))
    return path


def exported(module: nn.Module, path: Path, *, features: int) -> Path:
    """Saves ``module`` as a torch.export program with a dynamic batch."""
    module.eval()
    program = torch.export.export(
        module, (torch.zeros(2, features),), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    )
    torch.export.save(program, str(path))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def doubler_specs(features: int = 4) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (TensorSpec("input", "FP32", (-1, features)),), (TensorSpec("output", "FP32", (-1, features)),)


class Raiser(nn.Module):
    """y = x + 1, but raises for any input whose sum is over 1000 (a misbehaving model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 1000.0):
            raise RuntimeError("the model refuses inputs that sum over 1000")
        return x + 1.0


class RowCollapser(nn.Module):
    """Returns one row for inputs that sum over 1000: the wrong shape, but only sometimes
    (so it passes the warm-up at load and misbehaves while serving)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 1000.0):
            return x.sum(dim=0, keepdim=True)
        return x


def raiser_torchscript(path: Path, *, features: int = 4) -> Path:
    torch.jit.script(Raiser()).save(str(path))
    return path


def collapser_torchscript(path: Path) -> Path:
    torch.jit.script(RowCollapser()).save(str(path))
    return path


class Slow(nn.Module):
    """A model that takes a noticeable time per call (about a second on this machine class)."""

    def __init__(self, features: int = 4, width: int = 1024, rounds: int = 600) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(features, width)
        self.w = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.out = nn.Linear(width, features)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inp(x).repeat(64, 1)
        for _ in range(self.rounds):
            y = torch.tanh(y @ self.w)
        return self.out(y[: x.shape[0]])


def slow_torchscript(path: Path, *, rounds: int = 600) -> Path:
    torch.jit.script(Slow(rounds=rounds)).save(str(path))
    return path


class Widener(nn.Module):
    """Returns float64 where its declared signature says FP32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def widener_torchscript(path: Path) -> Path:
    torch.jit.script(Widener()).save(str(path))
    return path
