"""CompiledModel.__call__: the fast path (exact static types, positional tensors) gives what the
checked path gives, keeps every check, honours hooks on the module, runs without autograd and
restores the grad mode, also when the module raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer.errors import BackendError


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TwoOut(torch.nn.Module):
    def forward(self, a, b):
        return a + b, (a * b).sum(1)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    m = MLP().eval()
    return m, rtinfer.compile(m, example_inputs=torch.randn(1, 64), backend="torch",
                              cache=False)


def test_the_fast_path_matches_eager_and_the_checked_path(mlp):
    m, cm = mlp
    assert cm._fast is not None and cm._single
    x = torch.randn(1, 64)
    y = cm(x)
    with torch.no_grad():
        torch.testing.assert_close(y, m(x))
    # the checked path: numpy in (numpy out), a tensor subclass
    np.testing.assert_array_equal(cm(x.numpy()), y.numpy())
    assert torch.equal(cm(torch.nn.Parameter(x, requires_grad=False)), y)
    assert torch.equal(cm(x.t().contiguous().t()), y)


@pytest.mark.parametrize("args, match", [
    ((torch.randn(2, 64),), r"input 'x': expected f32\[1,64\], got f32\[2,64\]"),
    ((torch.randn(1, 64, dtype=torch.float64),), r"expected f32\[1,64\], got f64\[1,64\]"),
    ((torch.randn(1, 64), torch.randn(1, 64)), r"expected 1 input\(s\) \(x: f32\[1,64\]\), got 2"),
    ((), r"expected 1 input\(s\) \(x: f32\[1,64\]\), got 0"),
    ((3.0,), r"input 'x': expected f32\[1,64\], got a float"),
])
def test_static_inputs_are_still_checked(mlp, args, match):
    with pytest.raises(BackendError, match=match):
        mlp[1](*args)


def test_no_autograd_and_the_grad_mode_is_restored(mlp):
    _, cm = mlp
    x = torch.randn(1, 64, requires_grad=True)
    assert torch.is_grad_enabled()
    y = cm(x)
    assert not y.requires_grad and torch.is_grad_enabled()
    with torch.no_grad():
        cm(x)
        assert not torch.is_grad_enabled()

    def boom(module, args):
        raise RuntimeError("boom")

    handle = cm.module.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cm(x)
        assert torch.is_grad_enabled()
    finally:
        handle.remove()


def test_hooks_on_the_module_run(mlp):
    _, cm = mlp
    x = torch.randn(1, 64)
    plain = cm(x)
    handle = cm.module.register_forward_hook(lambda mod, args, out: tuple(o * 2 for o in out))
    try:
        torch.testing.assert_close(cm(x), plain * 2)
    finally:
        handle.remove()
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(type(mod).__name__))
    try:
        cm(x)
    finally:
        handle.remove()
    assert seen and torch.equal(cm(x), plain)


def test_a_replaced_module_is_called(mlp):
    m, cm = mlp
    other = rtinfer.compile(m, example_inputs=torch.randn(1, 64), backend="torch", cache=False)
    module = other.module
    calls = []
    other.module = lambda *xs: calls.append(1) or module(*xs)
    x = torch.randn(1, 64)
    assert torch.equal(other(x), cm(x)) and calls == [1]


def test_several_outputs_keep_their_structure():
    cm = rtinfer.compile(TwoOut(), example_inputs=(torch.randn(2, 3), torch.randn(2, 3)),
                         backend="torch", cache=False)
    assert cm._fast is not None and not cm._single
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    out = cm(a, b)
    assert isinstance(out, tuple) and len(out) == 2
    torch.testing.assert_close(out[0], a + b)
    torch.testing.assert_close(out[1], (a * b).sum(1))
