"""``torch.compile(model, backend="rtinfer")``: matches eager for an MLP and a CNN (parameters
folded in: BatchNorm folding applies), graph breaks run the eager Python between compiled
graphs, updated weights are picked up, and what rtinfer cannot compile runs eagerly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rtinfer  # noqa: F401  (the backend itself is found through its entry point)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class Branchy(torch.nn.Module):
    """A data-dependent branch on ``.item()`` and a print: two graph breaks."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        print("rtinfer graph-break test")
        if h.sum().item() > 0:
            return self.b(h) * 2
        return self.b(h) - 1


def _eval(cls):
    torch.manual_seed(0)
    m = cls().eval()
    if isinstance(m, CNN):
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _spy(monkeypatch):
    """Record every rtinfer.compile the backend makes."""
    import rtinfer.dynamo

    calls = []
    real = rtinfer.dynamo.compile_model

    def spy(*a, **k):
        cm = real(*a, **k)
        calls.append(cm)
        return cm

    monkeypatch.setattr(rtinfer.dynamo, "compile_model", spy)
    return calls


@pytest.mark.parametrize("cls,shape", [(MLP, (4, 16)), (CNN, (2, 3, 8, 8))])
def test_matches_eager(cls, shape, monkeypatch):
    m = _eval(cls)
    calls = _spy(monkeypatch)
    x = torch.randn(*shape)
    compiled = torch.compile(m, backend="rtinfer")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled(x + 1), m(x + 1), rtol=1e-4, atol=1e-5)
    assert len(calls) == 1  # one graph, compiled once, run twice
    ops = calls[0].info.ops_after
    assert not any(k.startswith(("batch_norm", "gelu")) for k in ops) or cls is MLP
    assert any(k.startswith("fused_") for k in ops)  # the weights were constants to fold


def test_runs_without_no_grad():
    m = _eval(CNN)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.compile(m, backend="rtinfer")(x), m(x).detach(),
                               rtol=1e-4, atol=1e-5)


def test_graph_breaks_fall_back_to_eager_between_graphs(capsys, monkeypatch):
    m = _eval(Branchy)
    calls = _spy(monkeypatch)
    compiled = torch.compile(m, backend="rtinfer")
    with torch.no_grad():
        for x in (torch.ones(2, 8), -torch.ones(2, 8) * 5):
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)
    assert "rtinfer graph-break test" in capsys.readouterr().out
    assert len(calls) >= 2  # the graph before the break and at least one branch


def test_updated_weights_are_picked_up():
    m = _eval(MLP)
    compiled = torch.compile(m, backend="rtinfer")
    x = torch.randn(4, 16)
    with torch.no_grad():
        compiled(x)
        m.fc2.bias.add_(1.0)
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


def test_what_rtinfer_cannot_capture_runs_eagerly(monkeypatch):
    import rtinfer.dynamo
    from rtinfer.errors import CaptureError

    def fail(*a, **k):
        raise CaptureError("no converter for aten.frobnicate")

    monkeypatch.setattr(rtinfer.dynamo, "compile_model", fail)
    m = _eval(MLP)
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match="eagerly: no converter for aten.frobnicate"):
        y = torch.compile(m, backend="rtinfer")(x)
    torch.testing.assert_close(y, m(x))


@pytest.mark.parametrize("cls,shape", [(MLP, (4, 16)), (CNN, (2, 3, 8, 8))])
def test_symbolic_sizes_compile_once_for_every_size(cls, shape, monkeypatch):
    """dynamic=True hands rtinfer SymInt sizes: they are read from the input tensors and the
    batch dim is compiled symbolic, so one compiled graph serves every batch size."""
    import warnings

    m = _eval(cls)
    calls = _spy(monkeypatch)
    compiled = torch.compile(m, backend="rtinfer", dynamic=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "running ... eagerly"
        for batch in (shape[0], 5, 3, 7):  # (batch 1 is one Dynamo specializes: a recompile)
            x = torch.randn(batch, *shape[1:])
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)
    assert len(calls) == 1
    assert not calls[0].ir.inputs[0].type.is_static
