"""The small MLP the serving tests serve: compiled with a symbolic batch and saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import rtinfer


def mlp_artifact(directory: Path) -> tuple[Path, Any]:
    """A seeded 16 -> 32 -> 4 MLP compiled (torch backend, batch dim ``B``) and saved under
    ``directory``: (the artifact's path, the compiled model)."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 4)).eval()
    cm = rtinfer.compile(mlp, example_inputs=torch.randn(2, 16), backend="torch",
                         dynamic_dims={"input": {0: "B"}})
    return cm.save(directory / "mlp"), cm
