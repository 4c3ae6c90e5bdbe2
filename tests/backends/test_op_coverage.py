"""Adding an op is one entry: every op a backend lowers (or emits) is in the op table, and every
op of the table is either lowered by each backend or listed in its ``UNSUPPORTED`` with a
reason. The tables are read without building anything (no TVM, no C++ compiler needed)."""

from __future__ import annotations

import pytest

from rtinfer.backends import native_backend, torch_backend, tvm_backend
from rtinfer.ir.ops import OPS

BACKENDS = {
    "torch": (torch_backend.EMITTERS, torch_backend.UNSUPPORTED),
    "native": (native_backend.LOWERINGS, native_backend.UNSUPPORTED),
    "tvm": (tvm_backend.LOWERINGS, tvm_backend.UNSUPPORTED),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_lowered_op_is_in_the_op_table(backend):
    lowered, unsupported = BACKENDS[backend]
    ops = set(OPS.names())
    assert sorted(set(lowered) - ops) == []
    assert sorted(set(unsupported) - ops) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_is_lowered_or_says_why_not(backend):
    lowered, unsupported = BACKENDS[backend]
    ops = set(OPS.names()) - {"const"}  # every backend takes constants itself
    assert sorted(ops - set(lowered) - set(unsupported)) == [], "neither lowered nor listed"
    assert sorted(set(lowered) & set(unsupported)) == [], "lowered and listed as unsupported"
    assert all(isinstance(why, str) and why.strip() for why in unsupported.values())


def test_the_tvm_facts_live_on_the_lowering_entries():
    """Each fused node stays one kernel (a Primitive function of its own); the ops whose untuned
    kernels are slow make ``auto`` decline the graph, and a fused op is as slow as its base."""
    lowerings = tvm_backend.LOWERINGS
    fused = {n for n in OPS.names() if n.startswith("fused_")}
    assert fused <= {n for n, entry in lowerings.items() if entry.grouped}
    for n in fused - {"fused_elementwise"}:
        base = n.removeprefix("fused_")
        assert lowerings[n].slow_untuned == lowerings[base].slow_untuned, n
    assert lowerings["conv2d"].slow_untuned and not lowerings["linear"].slow_untuned
