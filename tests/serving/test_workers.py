"""``rtinfer.compile(..., workers=...)``: the int8 per-layer sensitivity fans out over Ray
workers when a cluster is given (or Ray is initialised) and runs locally otherwise, with the
same results either way."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.int8 import Int8Report
from rtinfer.workers import RayWorkers, Workers, WorkersError, current


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 10)).eval()


def _int8(workers: str | None) -> rtinfer.CompiledModel:
    g = torch.Generator().manual_seed(1)
    calibration = [(torch.randn(4, 1, 8, 8, generator=g),) for _ in range(3)]
    return rtinfer.compile(_cnn(), example_inputs=(torch.randn(4, 1, 8, 8),),
                           precision="int8", calibration=calibration, backend="torch",
                           cache=False, workers=workers)


def _sensitivities(cm) -> list:
    """Every layer's row of the int8 report (name, precision, each sensitivity measured)."""
    return [vars(r) for r in Int8Report.from_record(cm.info.int8).layers]


def test_compile_takes_workers_and_local_runs_here():
    assert "workers" in inspect.signature(rtinfer.compile).parameters
    assert type(current()) is Workers  # no Ray initialised: the local loop
    assert list(Workers().map(lambda a, x: a + x, iter([1, 2, 3]), (10,))) == [11, 12, 13]


@pytest.mark.parametrize("bad", ["", 3])
def test_a_bad_workers_value_is_an_error_naming_it(bad):
    with pytest.raises(WorkersError, match=f"workers={bad!r}"):
        _int8(bad)


@pytest.mark.slow
def test_sensitivity_on_ray_equals_the_local_loop(monkeypatch):
    ray = pytest.importorskip("ray")
    local = _int8("local")
    assert len(_sensitivities(local)) >= 3
    on_ray_tasks: list = []
    fan_out = RayWorkers.map

    def counted(self, fn, items, shared=()):
        items = list(items)
        on_ray_tasks.extend(items)
        return fan_out(self, fn, items, shared)

    monkeypatch.setattr(RayWorkers, "map", counted)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        assert isinstance(current(), RayWorkers)
        on_ray = _int8(None)  # Ray initialised: the default fans out
    finally:
        ray.shutdown()
    # a Ray task per layer (and per form measured), and bit for bit the local loop's numbers
    assert len(on_ray_tasks) >= len(_sensitivities(local))
    assert all(r["sensitivity"] is not None for r in _sensitivities(on_ray))
    assert _sensitivities(on_ray) == _sensitivities(local)
    x = torch.randn(4, 1, 8, 8)
    np.testing.assert_array_equal(on_ray(x).numpy(), local(x).numpy())
