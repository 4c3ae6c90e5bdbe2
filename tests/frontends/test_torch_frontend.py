"""The PyTorch frontend on ordinary modules: conversion, structure, dynamic dims, errors."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import rtinfer
from rtinfer.errors import BackendError, CaptureError, ParseError, UnsupportedOpsError
from rtinfer.frontends.torch_frontend import CONVERTERS, flatten_inputs, unflatten_outputs
from rtinfer.ir import interpret, verify
from rtinfer.ir.equality import structural_diff
from rtinfer.ir.parser import parse
from rtinfer.ir.printer import print_graph
from rtinfer.ir.types import DType

TOL = dict(rtol=1e-4, atol=1e-5)


def check(model: nn.Module, *args, **kwargs) -> rtinfer.ir.Graph:
    """Capture, verify, and compare the interpreter with eager torch (flat outputs)."""
    g = rtinfer.capture(model, (args, kwargs) if kwargs else args)
    verify(g)
    with torch.no_grad():
        want = model.eval()(*args, **kwargs)
    got = interpret(g, *flatten_inputs(g, *args, **kwargs))
    got = got if isinstance(got, tuple) else (got,)
    want = torch.utils._pytree.tree_leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), **TOL)
    return g


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.pool(F.relu(self.bn(self.conv(x))))
        y = F.hardswish(self.conv2(y))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return F.log_softmax(self.fc(y), dim=-1)


def _trained_bn(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    m.train()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        m(torch.randn(4, 3, 16, 16))
    return m


def test_small_cnn():
    m = _trained_bn(SmallCNN())
    g = check(m, torch.randn(2, 3, 16, 16))
    ops = g.op_counts()
    assert ops["conv2d"] == 2 and ops["batch_norm"] == 1 and ops["max_pool2d"] == 1
    assert ops["linear"] == 1
    bn = next(n for n in g.nodes if n.op == "batch_norm")
    assert str(bn.provenance).startswith("torch:bn (aten._native_batch_norm_legit_no_training")


def test_mlp_elementwise_and_reductions():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = F.gelu(self.l1(x)) * torch.sigmoid(x.sum(-1, keepdim=True))
            h = torch.clamp(h, -2, 2) + 0.5 * torch.tanh(h) - h.mean(dim=0) / 3
            y = self.l2(F.silu(h))
            return y.softmax(-1), y.amax(-1), torch.argmax(y, dim=1), (y > 0).float() ** 2

    torch.manual_seed(0)
    check(MLP(), torch.randn(5, 6))


def test_kwargs_and_dict_outputs():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x, scale=None, mask=None, flag=True):
            y = self.proj(x)
            if mask is not None:
                y = y.masked_fill(~mask, 0.0)
            return {"y": y * (2.0 if flag else 1.0), "parts": (y.sum(-1), x)}

    torch.manual_seed(0)
    m = M().eval()
    x, mask = torch.randn(3, 4), torch.rand(3, 4) > 0.3
    g = rtinfer.capture(m, {"x": x, "mask": mask, "flag": False})
    assert [v.name for v in g.inputs] == ["x", "mask"]
    assert g.meta["torch"]["input_names"] == ["x", "mask"]
    out = unflatten_outputs(g, interpret(g, x.numpy(), mask.numpy()))
    want = m(x, mask=mask, flag=False)
    assert set(out) == {"y", "parts"} and isinstance(out["parts"], tuple)
    np.testing.assert_allclose(out["y"], want["y"].detach().numpy(), **TOL)
    np.testing.assert_allclose(out["parts"][0], want["parts"][0].detach().numpy(), **TOL)
    # (args, kwargs) form
    g2 = rtinfer.capture(m, ((x,), {"mask": mask}))
    assert len(g2.inputs) == 2


def test_model_output_structure():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class M(nn.Module):
        def forward(self, x):
            return BaseModelOutputWithPooling(last_hidden_state=x * 2, pooler_output=x.sum(1))

    x = torch.randn(2, 3)
    g = rtinfer.capture(M(), (x,))
    out = unflatten_outputs(g, interpret(g, x.numpy()), as_torch=True)
    assert isinstance(out, BaseModelOutputWithPooling)
    torch.testing.assert_close(out.pooler_output, x.sum(1))


def test_dynamic_batch_and_sequence():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.qkv = nn.Linear(16, 48)
            self.norm = nn.LayerNorm(16)

        def forward(self, input_ids):
            h = self.emb(input_ids)
            b, s, d = h.shape
            q, k, v = self.qkv(h).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
            h = self.norm(h + a)
            pos = torch.arange(s).float()
            return h.reshape(b * s, d).reshape(b, s, d) + pos[None, :, None]

    torch.manual_seed(0)
    m = Enc().eval()
    ids = torch.randint(0, 50, (2, 7))
    g = rtinfer.capture(m, {"input_ids": ids}, dynamic_dims={"input_ids": {0: "B", 1: "S"}})
    verify(g)
    B, S = sympy.Symbol("B", integer=True, positive=True), sympy.Symbol("S", integer=True,
                                                                         positive=True)
    assert g.inputs[0].type.shape == (B, S)
    assert g.outputs[0].type.shape == (B, S, 16)
    for shape in [(2, 7), (3, 11)]:
        x = torch.randint(0, 50, shape)
        with torch.no_grad():
            want = m(x).numpy()
        np.testing.assert_allclose(interpret(g, x.numpy()), want, **TOL)


def test_graph_module_from_symbolic_trace():
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    g = check(gm, torch.randn(3, 4))
    assert g.op_counts()["linear"] == 2


def test_user_module_unchanged():
    m = _trained_bn(SmallCNN())
    m.train()
    for p in m.conv.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rtinfer.capture(m, (torch.randn(1, 3, 16, 16),))
    assert m.training and m.bn.training
    assert not m.conv.weight.requires_grad and m.fc.weight.requires_grad
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@torch.library.custom_op("rtinfer_test::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@wobble.register_fake
def _(x):
    return torch.empty_like(x)


def test_unsupported_ops_reported_together():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            y = torch.ops.rtinfer_test.wobble(self.inner(x))
            return torch.fft.fft(y).real + torch.ops.rtinfer_test.wobble(x)

    with pytest.raises(UnsupportedOpsError) as e:
        rtinfer.capture(M(), (torch.randn(2, 4),))
    ops = {op for op, _, _ in e.value.ops}
    assert "rtinfer_test.wobble.default" in ops
    assert any("fft" in op for op in ops)
    assert len([o for o in e.value.ops if o[0] == "rtinfer_test.wobble.default"]) == 2
    assert "CONVERTERS" in str(e.value)


def test_data_dependent_control_flow():
    class M(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1

    with pytest.raises(CaptureError) as e:
        rtinfer.capture(M(), (torch.randn(3),))
    assert "torch.export could not capture M" in str(e.value)
    assert e.value.__cause__ is None and e.value.torch_error is not None
    assert len(str(e.value).splitlines()) <= 3


def test_int_and_dtype_promotion():
    class M(nn.Module):
        def forward(self, ids, x):
            pos = (ids != 0).long().cumsum(-1) * (ids != 0).long()
            q = torch.div(ids, 3, rounding_mode="floor") + ids % 4
            return pos, q, x + ids, x.to(torch.float16).to(torch.float32)

    ids = torch.randint(-5, 9, (2, 6))
    check(M(), ids, torch.randn(2, 6))


def test_shape_ops():
    class M(nn.Module):
        def forward(self, x, idx):
            a, b = x.split([1, 3], dim=1)
            y = torch.cat([b, a], 1).permute(0, 2, 1).contiguous()
            z = y[:, 1:3, ::2].transpose(1, 2).unsqueeze(0).squeeze(0)
            w = x.index_select(2, idx) + torch.gather(x, 2, idx.expand(2, 4, 2))
            p = F.pad(x, (1, 2)).repeat(1, 2, 1)
            return z, w, p, x[:, 0], torch.stack([x, x], 1).flatten(1, 2), x.chunk(2, 1)[1]

    check(M(), torch.randn(2, 4, 5), torch.tensor([4, 0]).reshape(1, 1, 2)[0, 0])


def test_conversion_table_is_keyed_by_overload():
    assert "aten.add.Tensor" in CONVERTERS and "aten.convolution.default" in CONVERTERS
    assert all(k.count(".") >= 2 for k in CONVERTERS)


def test_input_types():
    g = rtinfer.capture(nn.Identity(), (torch.zeros(2, 3, dtype=torch.int32),))
    assert g.inputs[0].type.dtype is DType.i32


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_several_index_tensors_count_from_the_end_of_their_own_axis(backend):
    """x[i, j] with j < 0 reads row i from its end, as eager does; j past its axis is an
    IndexError (it must not wrap into the next row of the flattened axes)."""
    from rtinfer.errors import IndexOutOfRangeError

    class Pick(torch.nn.Module):
        def forward(self, x, i, j):
            return x[i, j]

    x = torch.arange(12.0).reshape(3, 4)
    i, j = torch.tensor([0, 2, -1]), torch.tensor([-1, 1, -4])
    cm = rtinfer.compile(Pick(), example_inputs=(x, i, j), backend=backend, cache=False)
    torch.testing.assert_close(cm(x, i, j), Pick()(x, i, j))
    for bad_i, bad_j in (([0, 0, 0], [4, 0, 0]), ([3, 0, 0], [0, 0, 0]), ([0, 0, 0], [-5, 0, 0])):
        with pytest.raises(IndexError):
            Pick()(x, torch.tensor(bad_i), torch.tensor(bad_j))
        with pytest.raises(IndexOutOfRangeError):
            cm(x, torch.tensor(bad_i), torch.tensor(bad_j))


# -- ATen ops the op table lacks: one opaque aten_call each -----------------------------------


class Special(nn.Module):
    """kthvalue (two outputs) and i0 have no converter: each becomes one aten_call."""

    def forward(self, x):
        values, indices = torch.kthvalue(x, 2, dim=-1)
        return torch.special.i0(x) + 1, values * 2, indices


def _aten_calls(g: rtinfer.ir.Graph) -> list[str]:
    return sorted(n.attrs["target"] for n in g.nodes if n.op == "aten_call")


def test_missing_aten_op_is_captured_as_aten_call_and_matches_eager():
    x = torch.randn(4, 5)
    g = check(Special(), x)  # the interpreter runs it through torch: its own reference
    assert _aten_calls(g) == ["aten.i0.default", "aten.kthvalue.default"]
    assert [str(v.type) for v in g.outputs] == ["f32[4,5]", "f32[4]", "i64[4]"]
    # the text form carries it whole and parses back
    again = parse(print_graph(g))
    verify(again)
    assert structural_diff(g, again) is None


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=pytest.mark.slow)])
def test_aten_call_compiles_is_a_fallback_and_strict_refuses_it(backend):
    x = torch.randn(4, 5)
    cm = rtinfer.compile(Special(), example_inputs=(x,), backend=backend, cache=False)
    with torch.no_grad():
        want = Special()(x)
    for got, ref in zip(cm(x), want, strict=True):
        assert torch.equal(torch.as_tensor(got), ref)
    assert {"aten_call(aten.i0.default)", "aten_call(aten.kthvalue.default)"} <= set(
        cm.info.fallbacks)
    assert "aten_call(aten.kthvalue.default)" in cm.report()
    with pytest.raises(BackendError, match=r"aten\.kthvalue\.default"):
        rtinfer.compile(Special(), example_inputs=(x,), backend=backend, cache=False,
                        strict=True)


def test_aten_call_survives_save_and_load(tmp_path):
    x = torch.randn(4, 5)
    cm = rtinfer.compile(Special(), example_inputs=(x,), backend="torch", cache=False)
    cm.save(tmp_path / "m")
    loaded = rtinfer.load(tmp_path / "m")
    for got, ref in zip(loaded(x), cm(x), strict=True):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(ref))
    assert "aten_call(aten.kthvalue.default)" in loaded.info.fallbacks


_CALL = ('func @m(%x: f32[4,5]) -> f32[4,5] {{\n'
         '  %y = aten_call(%x) {{target="{target}", args="[[{{\\"in\\": 0}}], {{}}]", '
         'in_types=["{in_type}"], out_types=["f32[4,5]"]}}\n'
         '  return %y\n}}')


@pytest.mark.parametrize("target, message", [
    ("builtins.eval", "not an ATen overload name"),
    ("os.system.default", "not an ATen overload name"),
    ("aten.no_such_op.default", "no such ATen op"),
    ("aten.exp.no_such_overload", "no such ATen op"),
    ("aten.exp_.default", "writes to its inputs"),
])
def test_aten_call_target_must_be_a_functional_aten_overload(target, message):
    # an artifact's graph.ir is parsed on load: the name can only select an ATen op
    with pytest.raises(ParseError, match=message):
        parse(_CALL.format(target=target, in_type="f32[4,5]"))


def test_aten_call_checks_its_inputs_against_the_captured_types():
    assert interpret(parse(_CALL.format(target="aten.exp.default", in_type="f32[4,5]")),
                     np.zeros((4, 5), np.float32))[0, 0] == 1.0
    with pytest.raises(ParseError, match=r"aten\.exp\.default input 0: expected f32\[4,6\]"):
        parse(_CALL.format(target="aten.exp.default", in_type="f32[4,6]"))
    bad_args = _CALL.format(target="aten.exp.default", in_type="f32[4,5]").replace(
        '\\"in\\": 0', '\\"in\\": 3')
    with pytest.raises(ParseError, match="input reference 3 out of range"):
        parse(bad_args)


def test_case_a_converter_declines_becomes_an_aten_call():
    class Invert(nn.Module):
        def forward(self, x):  # the IR's logical_not (bitwise_not's op) takes bools only
            return torch.bitwise_not(x)

    x = torch.tensor([[0, 5, -3]], dtype=torch.int32)
    g = check(Invert(), x)
    assert _aten_calls(g) == ["aten.bitwise_not.default"]
    assert [n.op for n in g.nodes if n.op != "const"] == ["aten_call"]  # nothing half done


def test_random_op_is_not_captured_as_aten_call():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.poisson(x.abs())

    with pytest.raises(UnsupportedOpsError, match="random") as e:
        rtinfer.capture(Noisy(), (torch.rand(3),))
    assert e.value.ops[0][0] == "aten.poisson.default"


# -- in-place writes (functionalized by torch.export) -----------------------------------------


def shift_tokens_right(ids: torch.Tensor, pad: int, start: int) -> torch.Tensor:
    """Hugging Face's BART/Marian shift, in-place writes and all."""
    shifted = ids.new_zeros(ids.shape)
    shifted[:, 1:] = ids[:, :-1].clone()
    shifted[:, 0] = start
    shifted.masked_fill_(shifted == -100, pad)
    return shifted


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=pytest.mark.slow)])
def test_in_place_writes_become_ir_ops(backend):
    class Shift(nn.Module):
        def forward(self, ids, x):
            y = x.clone()
            y[1] = x[0] * 2  # select_scatter
            y[:, 2:4] = 0.5  # slice_scatter of a broadcast copy
            return shift_tokens_right(ids, 1, 2), y

    ids = torch.tensor([[5, -100, 7, 8], [9, 10, -100, 12]])
    g = check(Shift(), ids, torch.randn(3, 6))
    assert _aten_calls(g) == []
    cm = rtinfer.compile(Shift(), example_inputs=(ids, torch.randn(3, 6)), backend=backend,
                         cache=False, strict=True)  # strict: nothing falls back
    x = torch.randn(3, 6)
    got, want = cm(ids, x), Shift()(ids, x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# -- OpInfo regressions (issue 16) ------------------------------------------------------------


class Fn(nn.Module):
    """A module around one function of its inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _compiled_matches_eager(fn, *xs: torch.Tensor, backend: str = "torch") -> None:
    """Compile ``fn`` on ``xs`` and assert that its outputs equal eager's (on fresh copies, so
    an op that writes its inputs in eager cannot skew either side)."""
    m = Fn(fn)
    cm = rtinfer.compile(m, example_inputs=tuple(x.clone() for x in xs), backend=backend,
                         cache=False)
    with torch.no_grad():
        want = m(*(x.clone() for x in xs))
    got = cm(*(x.clone() for x in xs))
    got_l, want_l = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(got_l) == len(want_l)
    for a, b in zip(got_l, want_l, strict=True):
        torch.testing.assert_close(torch.as_tensor(a), b, equal_nan=True, **TOL)


def test_effectful_linalg_ops_capture_without_the_token():
    """torch.export wraps linalg's error checks in with_effects(token, op, ...): the token
    goes, the check (a no-op on valid input) is dropped, the results match eager."""
    a = torch.randn(4, 4) + 4 * torch.eye(4)
    b = torch.randn(4, 2)
    for fn, xs in ((torch.linalg.inv, (a,)), (torch.linalg.solve, (a, b)),
                   (lambda x: torch.linalg.cholesky(x @ x.mT), (a,))):
        g = rtinfer.capture(Fn(fn), xs)
        verify(g)
        assert len(g.inputs) == len(xs)  # no token input
        _compiled_matches_eager(fn, *xs)


def test_training_batch_norm_returns_only_the_user_outputs():
    """In training mode the exported program also returns the new running stats (a mutation
    of its inputs); the compiled model returns what eager returns, and equal values."""
    x, mean, var = torch.randn(4, 3, 5), torch.zeros(3), torch.ones(3)
    w, b = torch.randn(3), torch.randn(3)
    _compiled_matches_eager(lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=True),
                            x, mean, var, w, b)
    _compiled_matches_eager(lambda x, m, v: torch.native_batch_norm(x, None, None, m, v, True,
                                                                    0.1, 1e-5), x, mean, var)
    _compiled_matches_eager(lambda x: F.instance_norm(x), x)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_reductions_of_a_0d_tensor_and_over_no_dims(backend):
    """torch reads dim 0 of a 0-d tensor as its one element; dim=[] means every dim."""
    def fn(s, x):
        return (s.sum(0, keepdim=True), s.amax(0), s.amin(-1), s.argmax(0, keepdim=True),
                s.argmin(0), torch.logsumexp(s, (0,)), torch.count_nonzero(s, 0), s.mean(0),
                x.sum([]), x.mean([]))

    _compiled_matches_eager(fn, torch.tensor(-2.5), torch.randn(3, 4), backend=backend)


def test_zero_norm_counts_the_nonzero_elements():
    x = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])
    for fn in (lambda x: torch.linalg.vector_norm(x, 0), lambda x: torch.norm(x, 0, dim=1)):
        _compiled_matches_eager(fn, x)


def test_extra_outputs_that_are_read_run_the_whole_op_as_aten():
    """layer_norm's mean/rstd and max_pool's indices have no IR op: when the model reads
    them, the node is one aten_call; when it does not, the IR op is used."""
    x = torch.randn(2, 3, 8)

    def ln(x):
        return torch.native_layer_norm(x, [8], None, None, 1e-5)

    _compiled_matches_eager(ln, x)
    assert _aten_calls(rtinfer.capture(Fn(ln), (x,))) == ["aten.native_layer_norm.default"]
    img = torch.randn(1, 2, 6, 6)
    _compiled_matches_eager(lambda x: F.max_pool2d(x, 2, return_indices=True), img)
    only_y = rtinfer.capture(Fn(lambda x: torch.native_layer_norm(x, [8], None, None, 1e-5)[0]),
                             (x,))
    assert _aten_calls(only_y) == [] and "layer_norm" in [n.op for n in only_y.nodes]


def test_aten_call_keyword_named_like_a_tag():
    """A keyword argument called dtype is a keyword, not a tagged value."""
    text = ('func @m(%x: f32[2,3]) -> f64[2,3] {\n'
            '  %y = aten_call(%x) {target="aten.cumsum.default", '
            'args="[[{\\"in\\": 0}, 1], {\\"dtype\\": {\\"dtype\\": \\"float64\\"}}]", '
            'in_types=["f32[2,3]"], out_types=["f64[2,3]"]}\n'
            '  return %y\n}')
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = interpret(parse(text), x)
    np.testing.assert_array_equal(got, np.cumsum(x, 1, dtype=np.float64))
    # and through capture: masked cumprod passes dtype as a keyword to an op without converter
    mask = torch.tensor([True, False, True, True])
    _compiled_matches_eager(lambda x, m: torch.masked._ops.cumprod(x, 0, mask=m),
                            torch.randn(4), mask)


def test_sparse_input_is_a_capture_error_naming_it():
    dense = torch.eye(3)
    with pytest.raises(CaptureError, match=r"example input #1 is a torch\.sparse_csr tensor"):
        rtinfer.capture(Fn(lambda a, b: a @ b), (dense, dense.to_sparse_csr()))

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = dense.to_sparse_csr()

        def forward(self, x):
            return x + 1

    with pytest.raises(CaptureError, match=r"attribute table of the model"):
        rtinfer.capture(Holder(), (dense,))


def test_logical_ops_read_nonzero_as_true():
    x = torch.tensor([[0.0, 1.5, float("nan")], [-0.0, 0.0, -2.0]])

    def fn(x):
        return (torch.logical_not(x), torch.all(x), torch.any(x), x.all(1), x.any(0, True),
                torch.logical_and(x, x - 1.5), torch.logical_or(x, x - x))

    assert _aten_calls(rtinfer.capture(Fn(fn), (x,))) == []  # converted, not kept as ATen
    _compiled_matches_eager(fn, x)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_resizing_and_pooling_variants_are_converted(backend):
    def fn(img, chw, s, idx):
        return (
            F.interpolate(img, scale_factor=1.7, mode="bilinear"),  # 1/scale, not in/out
            F.interpolate(img, size=(8, 4), mode="bilinear", align_corners=True),
            F.interpolate(img, size=(3, 11), mode="bilinear", align_corners=False),
            F.upsample_bilinear(img, scale_factor=2),
            F.avg_pool2d(img, 3, 2, 1, ceil_mode=True, divisor_override=2),  # clipped windows
            F.avg_pool2d(img, 2, divisor_override=3),
            F.adaptive_avg_pool2d(chw, (4, 3)),  # unbatched [C, H, W]
            F.adaptive_avg_pool2d(chw, 1),
            torch.index_select(s, 0, idx),  # a 0-d tensor
        )

    xs = (torch.randn(1, 2, 5, 7), torch.randn(3, 9, 6), torch.tensor(4.0), torch.tensor([0]))
    assert _aten_calls(rtinfer.capture(Fn(fn), xs)) == []  # all converted to IR ops
    _compiled_matches_eager(fn, *xs, backend=backend)
