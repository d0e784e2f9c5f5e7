"""PyTorch: TorchScript (``torch.jit``) and ``torch.export`` programs, on CUDA or the CPU.

Nothing here unpickles arbitrary objects: TorchScript archives are read by TorchScript's
own restricted loader, every ``torch.load`` (inside ``torch.export.load``) is forced to
``weights_only=True``, and pickled ``torch.save`` files are refused by the registry before
they reach a worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference_workers.datatypes import TORCH_TYPES
from inference_workers.runtimes.base import (
    ModelExecutionError,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    batched_signature,
)
from inference_workers.types import ModelFormat, TensorSpec

log = logging.getLogger(__name__)

# torch.export.load unpickles parts of a .pt2 (sample inputs, "use_pickle" weights) and
# falls back to weights_only=False when the safe load fails: that would run an uploader's
# code. This process only ever opens untrusted artifacts, so every torch.load here is forced
# to weights_only=True (torch reads this variable on each call).
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)


def _spec_from_meta(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise RuntimeLoadError(f"'{name}' is not a tensor; Berth serves tensor inputs and outputs only")
    datatype = TORCH_TYPES.get(str(value.dtype))
    if datatype is None:
        raise RuntimeLoadError(f"'{name}' has dtype {value.dtype}, which Berth cannot serve")
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def _export_signature(program: Any) -> Signature:
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            name = spec.arg.name
            inputs.append(_spec_from_meta(name, placeholders[name].meta.get("val")))
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    values = output_node.args[0]
    values = values if isinstance(values, list | tuple) else [values]
    outputs = [_spec_from_meta(f"output_{i}", node.meta.get("val")) for i, node in enumerate(values)]
    return batched_signature(tuple(inputs), tuple(outputs))


class TorchRunner:
    """A TorchScript module or an exported program, run under ``torch.inference_mode``."""

    def __init__(
        self,
        path: Path,
        model_format: ModelFormat,
        options: RuntimeOptions,
        *,
        inputs: tuple[TensorSpec, ...] = (),
        outputs: tuple[TensorSpec, ...] = (),
    ) -> None:
        self._device = torch.device(options.device)
        if options.intra_op_threads:
            torch.set_num_threads(options.intra_op_threads)
        if options.inter_op_threads and torch.get_num_interop_threads() != options.inter_op_threads:
            try:
                torch.set_num_interop_threads(options.inter_op_threads)
            except RuntimeError:  # torch allows it once per process, before any parallel work
                log.warning("torch inter-op threads are already %d; keeping them", torch.get_num_interop_threads())
        try:
            if model_format == "torchscript":
                if not inputs or not outputs:
                    raise RuntimeLoadError(
                        "a TorchScript file carries no signature: give its inputs and outputs (name, datatype, shape)"
                    )
                self._module = torch.jit.load(str(path), map_location=self._device)
                self._module.eval()
                self.signature: Signature = batched_signature(inputs, outputs)
                self.platform = "pytorch_libtorch"
            else:
                # An open file, not the path: the cache names artifacts by digest, and
                # torch.export.load takes a path only when it ends in .pt2 (else it warns
                # and falls back to its legacy reader).
                with open(path, "rb") as archive:
                    program = torch.export.load(archive)
                self.signature = _export_signature(program)
                if inputs:
                    self.signature = batched_signature(inputs, outputs or self.signature.outputs)
                self._module = program.module().to(self._device)
                self.platform = "pytorch_export"
        except RuntimeLoadError:
            raise
        except (RuntimeError, ValueError, KeyError, OSError, AttributeError) as exc:
            raise RuntimeLoadError(f"PyTorch cannot load this {model_format} artifact: {exc}") from exc

    @property
    def weight_bytes(self) -> int:
        """The bytes of the module's parameters and buffers (on its device): the least it
        holds there, whatever a measure of its load said."""
        tensors = [*self._module.parameters(), *self._module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the module; torch errors become ``ModelExecutionError``."""
        try:
            tensors = [
                torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(self._device)
                for spec in self.signature.inputs
            ]
            with torch.inference_mode():
                result = self._module(*tensors)
            values = result if isinstance(result, list | tuple) else (result,)
            if len(values) != len(self.signature.outputs):
                raise ModelExecutionError(
                    f"the model returned {len(values)} outputs; its signature has {len(self.signature.outputs)}"
                )
            return {
                spec.name: value.detach().to("cpu").numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                for spec, value in zip(self.signature.outputs, values, strict=True)
            }
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelExecutionError(f"PyTorch failed: {exc}") from exc

    def close(self) -> None:
        """Drops the module; on a GPU its cached blocks go back to the driver."""
        self.__dict__.pop("_module", None)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
