"""The native backend's finite fast path (rtinfer.backends.native.finite): relu and clip fused
into oneDNN where the inputs bound every value, the NaN-keeping plan for any other call."""

import math

import pytest
import torch

import rtinfer
from rtinfer.backends.native import finite

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _small_models_too(monkeypatch):
    """The models here are small: the fast path's size floor would leave them out."""
    from rtinfer.backends import native_backend

    monkeypatch.setattr(native_backend, "FINITE_MIN_MACS", 0)


def test_small_models_keep_the_exact_plan_and_skip_the_check():
    """Under FINITE_MIN_MACS multiply-adds the check of the inputs would cost more than the
    clamps' passes save (the MLP: 4 -> 7 us a call): no fast path."""
    from rtinfer.backends import native_backend

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
    assert finite.input_bound(_compile(m, torch.randn(1, 64)).module.graph) == finite.T_MAX
    native_backend.FINITE_MIN_MACS = 4_000_000  # the fixture puts it back
    assert _compile(m, torch.randn(1, 64)).module.finite_bound is None


class Inverted(torch.nn.Module):
    """MobileNetV2's block: 1x1 expansion + ReLU6, depthwise 3x3 + ReLU6, 1x1 projection, a
    residual; then pooling and a classifier."""

    def __init__(self, c=8, e=32, scale=1.0):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.expand = torch.nn.Conv2d(c, e, 1)
        self.dw = torch.nn.Conv2d(e, e, 3, padding=1, groups=e)
        self.project = torch.nn.Conv2d(e, c, 1)
        self.fc = torch.nn.Linear(c, 5)
        with torch.no_grad():
            self.stem.weight.mul_(scale)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        y = torch.nn.functional.relu6(self.expand(x))
        y = torch.nn.functional.relu6(self.dw(y))
        x = x + self.project(y)
        return self.fc(x.mean((2, 3)))


def _compile(m, x, monkeypatch=None):
    return rtinfer.compile(m.eval(), example_inputs=(x,), backend="native")


def test_the_bound_is_proven_for_a_clipped_net_and_refused_elsewhere():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    cm = _compile(Inverted(), x)
    assert cm.module.finite_bound == finite.T_MAX  # every block is clipped at 6
    assert "finite fast path: relu/clip fused into oneDNN" in cm.report()
    # a stem so large that 1e12 inputs would overflow float32: a smaller proven bound, and
    # inputs at that bound keep every value below LIMIT
    big = _compile(Inverted(scale=1e22), x)
    t = big.module.finite_bound
    assert t is not None and 1.0 <= t < finite.T_MAX
    w = big.module.graph
    assert finite.input_bound(w) == t
    # no clamp to gain from (GELU), or an op with no rule: none
    gelu = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    assert _compile(gelu, torch.randn(2, 8)).module.finite_bound is None
    clamp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Softmax(dim=-1)).eval()
    assert _compile(clamp, torch.randn(2, 8)).module.finite_bound is None


def test_finite_inputs_run_the_fused_plan_and_match_eager():
    torch.manual_seed(0)
    m, x = Inverted().eval(), torch.randn(2, 3, 16, 16)
    cm = _compile(m, x)
    torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    assert cm.module._exact == {}  # no exact plan needed



def _pointwise():
    """Two 1x1 convolutions with ReLU6, both oneDNN steps (8 input channels: not the stem's
    own kernel)."""
    return torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6(),
                               torch.nn.Conv2d(16, 8, 1), torch.nn.ReLU6()).eval()


def test_the_fused_plan_alone_would_lose_nan_so_calls_are_checked():
    """Given a NaN directly (never done by a call), the fused plan's ReLU6 turns it into a
    bound where eager keeps it; through a call, the check sends it to the exact plan."""
    torch.manual_seed(0)
    m, x = _pointwise(), torch.randn(1, 8, 6, 6)
    cm = _compile(m, x)
    assert cm.module.finite_bound == finite.T_MAX
    (plan, threads), = cm.module._plans.values()
    bad = x.clone()
    bad[0, :, 2, 2] = math.nan
    assert torch.isnan(m(bad)[0, :, 2, 2]).all()
    fused = plan.run((bad,), threads)[0]
    assert not torch.isnan(fused[0, :, 2, 2]).any()  # 0 or 6: the bound, not NaN
    assert torch.equal(torch.isnan(cm(bad)), torch.isnan(m(bad)))


@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "huge"])
def test_inputs_outside_the_bound_run_the_nan_keeping_plan(special):
    torch.manual_seed(0)
    m, x = Inverted().eval(), torch.randn(2, 3, 16, 16)
    cm = _compile(m, x)
    bad = x.clone()
    bad[1, 0, 4, 4] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf,
                       "huge": 1e13}[special]
    got, want = cm(bad), m(bad)
    # eager's relu6 keeps NaN; oneDNN's fused clip would have turned it into 0 or 6
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-4)
    assert len(cm.module._exact) == 1
    # a finite call after it runs the fused plan again, and the exact plan is kept
    torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    assert len(cm.module._exact) == 1
    if special == "nan":
        assert torch.isnan(got[1]).any() and not torch.isnan(got[0]).any()


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("RTINFER_FINITE_FAST", "0")
    torch.manual_seed(0)
    m, x = Inverted().eval(), torch.randn(1, 3, 16, 16)
    cm = _compile(m, x)
    assert cm.module.finite_bound is None and "finite fast path" not in cm.report()
    torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    p = _compile(_pointwise(), torch.randn(1, 8, 6, 6))
    (plan, threads), = p.module._plans.values()
    bad = torch.randn(1, 8, 6, 6)
    bad[0, :, 2, 2] = math.nan
    assert torch.isnan(plan.run((bad,), threads)[0][0, :, 2, 2]).all()  # NaN-keeping clamps


def test_within_checks_every_input_in_one_pass():
    t = 10.0
    assert finite.within((torch.ones(3) * 10, torch.zeros(0)), t)
    assert not finite.within((torch.ones(3), torch.tensor([1.0, 10.5])), t)
    assert not finite.within((torch.tensor([math.nan, 0.0]),), t)
    assert not finite.within((torch.tensor([-math.inf]),), t)
