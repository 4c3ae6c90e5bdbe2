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


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """``rtinfer.compile`` caches by default; tests use a cache of their own, not the user's."""
    import os

    old = os.environ.get("RTINFER_CACHE_DIR")
    os.environ["RTINFER_CACHE_DIR"] = str(tmp_path_factory.mktemp("rtinfer-cache"))
    yield
    if old is None:
        os.environ.pop("RTINFER_CACHE_DIR", None)
    else:
        os.environ["RTINFER_CACHE_DIR"] = old


def _cpu_levels() -> list[str]:
    """Every CPU level this host runs, best first (``rtinfer.kernels.isa``)."""
    from rtinfer.kernels import isa

    return list(reversed(isa.supported()))


@pytest.fixture(scope="module", params=_cpu_levels())
def native(request):
    """rtinfer's native extension, once for each CPU level this host runs (the AVX-512, AVX2
    and generic kernels are each checked where the CPU can execute them; each level builds on
    first use); the test is skipped where it cannot be built here (no C++ compiler, no oneDNN)."""
    from rtinfer.kernels import build

    try:
        return build.load(level=request.param)
    except build.NativeUnavailable as e:
        pytest.skip(f"native backend unavailable here: {e}")
