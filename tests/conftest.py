"""Shared test setup."""

import pytest

from rtinfer.ir.ops import OPS


@pytest.fixture(autouse=True, scope="module")
def _restore_op_table():
    """Ops a test module declares for itself (``test_ir_*``) leave the table when the module
    ends, so tests that enumerate the op table see only rtinfer's own ops."""
    before = dict(OPS._ops)
    yield
    OPS._ops.clear()
    OPS._ops.update(before)
