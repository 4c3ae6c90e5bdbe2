"""Op facts live on the op-table entry (shared/STYLE.md): weight roles, cost hooks and the
keep-for-lowering trait are read by fusion, FLOP counts, quantization and pruning; no pass keeps
a list of op names of its own."""

from __future__ import annotations

import io
import textwrap

from rtinfer.ir.ops import KEEP, OPS, get_op
from rtinfer.ir.ops.fused import ACTIVATIONS, activation_op, fused_activation
from rtinfer.ir.parser import parse
from rtinfer.pass_manager import run_pipeline


def test_weight_roles_point_at_a_weight_input_with_distinct_axes():
    roles = {o.name: o.weight for o in OPS if o.weight is not None}
    assert {"linear", "matmul", "conv2d", "conv_transpose2d", "fused_conv2d"} <= set(roles)
    for name, role in roles.items():
        opdef = get_op(name)
        assert 0 <= role.input < len(opdef.inputs), name
        out_axis, in_axis = role.axes(2)
        assert out_axis != in_axis, name


def test_weight_roles_agree_with_the_channel_groups():
    """The out-channel axis of the weight is in the same channel group as the output's
    channels: the role and the channel-flow hook state one fact two ways."""
    from rtinfer.ir.types import DType, TensorType

    t = lambda *s: TensorType(DType.f32, s)  # noqa: E731
    cases = {"linear": ([t(4, 8), t(16, 8)], {}, ("out", 0, 1)),
             "conv2d": ([t(1, 8, 5, 5), t(16, 8, 3, 3)], None, ("out", 0, 1)),
             "conv_transpose2d": ([t(1, 8, 5, 5), t(8, 16, 3, 3)], None, ("out", 0, 1))}
    for name, (ins, attrs, out_channels) in cases.items():
        opdef = get_op(name)
        attrs = opdef.complete_attrs(attrs or {})
        groups = opdef.channel_groups(ins, attrs)
        role = opdef.weight
        out_axis, _ = role.axes(ins[role.input].rank)
        group = next(g for g in groups if out_channels in g)
        assert ("in", role.input, out_axis) in group, name


def test_cost_hooks_count_multiply_adds():
    g = parse(textwrap.dedent("""
        func @main(%x: f32[2,8]) -> f32[2,4] {
          %w = const f32[4,8] random(seed=0)
          %y = linear(%x, %w)
          return %y
        }"""))
    (node,) = [n for n in g.nodes if n.op == "linear"]
    assert get_op("linear").cost(node) == 2 * 2 * 8 * 4
    assert get_op("fused_linear").cost is get_op("linear").cost
    assert get_op("relu").cost is None


def test_activation_table_inverts_exactly():
    for name, a in ACTIVATIONS.items():
        if a.op is None:
            continue
        alpha, beta = (0.1 if "alpha" in a.params else 0.0), (6.0 if "beta" in a.params else 0.0)
        op_name, attrs = activation_op(name, alpha, beta)
        assert fused_activation(op_name, get_op(op_name).complete_attrs(attrs)) == (
            name, alpha, beta)


def test_quantize_and_dequantize_are_kept_for_lowering_by_every_pass():
    assert {o.name for o in OPS if o.has(KEEP)} == {"quantize", "dequantize", "qconv2d",
                                                    "qlinear", "qmatmul", "qlinear_dynamic"}
    g = parse(textwrap.dedent("""
        func @main(%x: f32[2,4]) -> f32[2,4] {
          %w = const f32[4,4] random(seed=0)
          %q = quantize(%w) {dtype=i8, scale=[0.05], zero_point=[0]}
          %d = dequantize(%q)
          %y = linear(%x, %d)
          return %y
        }"""))
    out = run_pipeline(g, "O3", out=io.StringIO()).graph
    assert {"quantize", "dequantize"} <= {n.op for n in out.nodes}


def test_batchnorm_folds_into_every_layer_with_a_weight_role():
    """conv3d was not on fold-batchnorm's old hand-written list; the weight role covers it."""
    g = parse(textwrap.dedent("""
        func @main(%x: f32[1,2,3,4,4]) -> f32[1,3,3,4,4] {
          %w = const f32[3,2,1,1,1] random(seed=1)
          %b = const f32[3] random(seed=2)
          %m = const f32[3] random(seed=3)
          %v = const f32[3] random(seed=4, low=0.5, high=2.0)
          %y = conv3d(%x, %w, %b)
          %z = batch_norm(%y, %m, %v)
          return %z
        }"""))
    result = run_pipeline(g, "fold-batchnorm,dce", verify_each=True, check_requires=False,
                          check_numerics={"rtol": 1e-4, "atol": 1e-5}, out=io.StringIO())
    assert [n.op for n in result.graph.nodes if n.op != "const"] == ["conv3d"]
