"""The benchmark's models, each with its fixed batch-1 inputs.

ResNet-18 and MobileNetV2 at 224x224 (torchvision architectures, seeded random weights with
non-trivial BatchNorm statistics), all-MiniLM-L6-v2 with its real weights at 128 tokens twice
(``minilm``: one 10-token sentence padded to 128, as in a padded batch; ``minilm_full``: 128
tokens of standard-library docstring prose, no padding), and a small MLP whose time is mostly
per-call overhead. Every model takes its inputs positionally and returns one tensor, so all
systems run the same function.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from calibration import DataSet, dataset
from torch import nn

from rtinfer import models


@dataclass
class Workload:
    """A model with its fixed batch-1 inputs; the model takes the inputs positionally and
    returns one tensor."""

    name: str
    description: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    _onnx: tuple[Path, str, float] | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    _data: DataSet | None = field(default=None, repr=False)
    _gop: float | None = field(default=None, repr=False)

    def data(self) -> DataSet:
        """The int8 systems' calibration and held-out inputs (``calibration.dataset``), built
        once; raises ``calibration.DataUnavailable`` where a package it needs is missing."""
        if self._data is None:
            self._data = dataset(self.name, self.inputs)
        return self._data

    def gop(self) -> float:
        """Billions of operations of one call: 2 x the multiply-adds of the convolutions,
        matrix products and attention, by rtinfer's cost model on the captured graph (the
        same count for fp32 and int8: an int8 multiply-add is two operations too)."""
        if self._gop is None:
            import rtinfer
            from rtinfer.ir.flops import flops

            self._gop = flops(rtinfer.capture(self.model, self.inputs)) / 1e9
        return self._gop

    def numpy_inputs(self) -> list[np.ndarray]:
        return [x.numpy() for x in self.inputs]

    def onnx(self) -> tuple[Path, str]:
        """The model exported to ONNX once (shared by ONNX Runtime and OpenVINO): its path
        and the exporter that produced it. ``torch.onnx.export(dynamo=True)`` first, the
        TorchScript exporter if that fails."""
        if self._onnx is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"rtinfer-bench-{self.name}-")
            path = Path(self._tmp.name) / f"{self.name}.onnx"
            t0 = time.perf_counter()
            try:
                torch.onnx.export(self.model, self.inputs, str(path), dynamo=True,
                                  input_names=list(self.input_names), output_names=["output"],
                                  verbose=False)
                exporter = "dynamo"
            except Exception as e:  # any exporter failure: try the other one
                first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                try:
                    torch.onnx.export(self.model, self.inputs, str(path), dynamo=False,
                                      input_names=list(self.input_names),
                                      output_names=["output"], opset_version=17)
                except Exception as e2:
                    raise RuntimeError(f"ONNX export failed: dynamo: {first}; torchscript: "
                                       f"{type(e2).__name__}: {e2}") from None
                exporter = f"torchscript (dynamo failed: {first[:120]})"
            self._onnx = (path, exporter, time.perf_counter() - t0)
        return self._onnx[0], self._onnx[1]

    @property
    def onnx_export_s(self) -> float | None:
        return None if self._onnx is None else self._onnx[2]

    @property
    def onnx_exporter(self) -> str | None:
        return None if self._onnx is None else self._onnx[1]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class MiniLMEncoder(nn.Module):
    """The Hugging Face BERT behind positional inputs and one output (last_hidden_state)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10)).eval()


def build(name: str, minilm_seq: int = 128) -> Workload:
    torch.manual_seed(0)
    if name == "resnet18":
        return Workload(name, "ResNet-18, 1x3x224x224",
                        models.randomize_batchnorm(models.resnet18()), (models.image_input(),),
                        ("x",))
    if name == "mobilenet_v2":
        return Workload(name, "MobileNetV2, 1x3x224x224",
                        models.randomize_batchnorm(models.mobilenet_v2()),
                        (models.image_input(),), ("x",))
    if name in ("minilm", "minilm_full"):
        if name == "minilm":  # one short sentence, padded: 10 tokens, the rest padding
            enc = models.minilm_inputs(seq=minilm_seq)
        else:  # standard-library docstring prose, truncated: every position a token
            enc = models.minilm_inputs([" ".join(models.english_sentences()[:60])],
                                       seq=minilm_seq)
        live = int(enc["attention_mask"].sum())
        return Workload(name, f"all-MiniLM-L6-v2 (real weights), 1x{minilm_seq} tokens "
                        f"({live} of text{', the rest padding' if live < minilm_seq else ''}), "
                        "last_hidden_state", MiniLMEncoder(models.minilm()).eval(),
                        (enc["input_ids"], enc["attention_mask"]),
                        ("input_ids", "attention_mask"))
    if name == "mlp":
        x = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
        return Workload(name, "MLP 64-128-128-10 (ReLU), 1x64: per-call overhead", mlp(),
                        (x,), ("x",))
    raise ValueError(f"unknown model {name!r}")
