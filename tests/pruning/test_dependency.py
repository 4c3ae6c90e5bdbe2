"""The channel dependency graph and the prune-channels pass: exactness.

Channels whose weights are zero (the rows that make them and the columns that read them) do
not reach the outputs, so pruning exactly those must give the unpruned model's outputs, and the
pruned IR must verify. Each graph here zeroes one half of every prunable group's channels at
random; l2 importance must find them, and the pruned graph must compute the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import rtinfer
from rtinfer.errors import PruneError
from rtinfer.ir import Graph, interpret
from rtinfer.ir.types import DType, TensorType
from rtinfer.ir.verifier import verify
from rtinfer.passes.pruning.dependency import ChannelDependency
from rtinfer.passes.pruning.prune_channels import (
    apply_pruning,
    group_importance,
    kept_count,
    prune_graph,
)
from rtinfer.rewrite import Rewriter


class Builder:
    """A graph under construction with seeded random constants."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0):
        self.g = Graph()
        self.rng = np.random.default_rng(seed)
        self.x = self.g.add_input(TensorType(DType.f32, shape), "x")

    def const(self, *shape: int, positive: bool = False):
        a = self.rng.standard_normal(shape).astype(np.float32) * 0.5
        return self.g.add_const(np.abs(a) + 0.5 if positive else a)

    def conv(self, x, c_out: int, k: int = 3, groups: int = 1, bias: bool = True):
        c_in = x.type.shape[1]
        w = self.const(c_out, c_in // groups, k, k)
        ins = [x, w] + ([self.const(c_out)] if bias else [])
        return self.g.add_op("conv2d", *ins, pad=(k // 2,), groups=groups)

    def bn(self, x):
        c = x.type.shape[1]
        return self.g.add_op("batch_norm", x, self.const(c), self.const(c, positive=True),
                             self.const(c), self.const(c))

    def linear(self, x, n_out: int):
        return self.g.add_op("linear", x, self.const(n_out, x.type.shape[-1]),
                             self.const(n_out))

    def relu(self, x):
        return self.g.add_op("relu", x)

    def done(self, *outs) -> Graph:
        self.g.set_outputs(outs)
        verify(self.g)
        return self.g


def _zero_channels(graph: Graph, dep: ChannelDependency, drop: np.ndarray) -> None:
    """Zero every weight slice (out and in) of the channels ``drop`` (the test owns ``graph``:
    its constants are swapped for zeroed copies of the same shape)."""
    gone = np.zeros(dep.labels.max() + 1, bool)
    gone[drop] = True
    for g in dep.groups:
        for w in g.weights:
            labels = dep.label_of(w.weight, w.axis)
            mask = gone[labels]
            if mask.any():
                data = np.array(w.weight.const_data)
                idx = [slice(None)] * data.ndim
                idx[w.axis] = np.flatnonzero(mask)
                data[tuple(idx)] = 0
                data.setflags(write=False)
                w.weight.producer.attrs["value"] = data


def _check_exact(graph: Graph, ratio: float = 0.5, seed: int = 0,
                 expect_pruned: bool = True) -> Graph:
    """Zero ``ratio`` of every prunable group's channels, prune by l2, compare outputs."""
    rng = np.random.default_rng(seed)
    dep = ChannelDependency(graph)
    drop = [g.channels[rng.permutation(g.size)[:g.size - kept_count(g.size, ratio, 1)]]
            for g in dep.groups if g.prunable]
    if expect_pruned:
        assert drop, "no prunable group"
    drop_all = np.concatenate(drop) if drop else np.zeros(0, np.int64)
    _zero_channels(graph, dep, drop_all)
    x = rng.standard_normal([d for d in graph.inputs[0].type.shape]).astype(np.float32)
    before = interpret(graph, x)
    pruned = graph.clone()
    result = prune_graph(pruned, ratio=ratio, importance="l2")
    verify(pruned)
    after = interpret(pruned, x)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert result.removed == sum(len(d) for d in drop)
    assert pruned.outputs[0].type == graph.outputs[0].type  # the interface stays
    return pruned


def _weights(graph: Graph) -> dict[str, tuple[int, ...]]:
    return {n.op + str(k): n.inputs[1].type.shape
            for k, n in enumerate(x for x in graph.nodes if x.op in ("conv2d", "linear"))}


def test_conv_bn_chain_into_linear_through_flatten():
    b = Builder((2, 3, 6, 6))
    y = b.relu(b.bn(b.conv(b.x, 8)))
    y = b.relu(b.conv(y, 6))
    y = b.g.add_op("flatten", y)  # [2, 6*36]: each channel a block of 36 features
    g = b.done(b.linear(y, 5))
    pruned = _check_exact(g)
    shapes = [n.inputs[1].type.shape for n in pruned.nodes if n.op in ("conv2d", "linear")]
    assert shapes == [(4, 3, 3, 3), (3, 4, 3, 3), (5, 3 * 36)]


def test_residual_add_joins_the_producers():
    b = Builder((1, 4, 5, 5), seed=1)
    a = b.relu(b.conv(b.x, 8))
    r = b.conv(b.relu(b.conv(a, 8)), 8)
    s = b.g.add_op("add", a, r)  # a, the inner conv's output and s: one group
    g = b.done(b.g.add_op("reduce_mean", b.conv(s, 3), axes=(2, 3)))
    dep = ChannelDependency(g)
    sizes = sorted(grp.size for grp in dep.groups if grp.prunable)
    assert sizes == [8, 8]  # the residual group and the middle conv's own
    pruned = _check_exact(g)
    convs = [n for n in pruned.nodes if n.op == "conv2d"]
    assert [c.out.type.shape[1] for c in convs] == [4, 4, 4, 3]


def test_concat_maps_output_channels_to_offsets_of_its_inputs():
    b = Builder((1, 3, 4, 4), seed=2)
    p = b.relu(b.conv(b.x, 8))
    q = b.relu(b.conv(b.x, 4))
    c = b.g.add_op("concat", p, q, axis=1)  # channels 0..7 from p, 8..11 from q
    g = b.done(b.conv(c, 2))
    dep = ChannelDependency(g)
    assert sorted(grp.size for grp in dep.groups if grp.prunable) == [4, 8]
    pruned = _check_exact(g)
    cat = next(n for n in pruned.nodes if n.op == "concat")
    assert cat.out.type.shape[1] == 6


def test_split_and_slice_update_their_attributes():
    b = Builder((1, 3, 4, 4), seed=3)
    y = b.relu(b.conv(b.x, 12))
    s1, s2 = b.g.create_node("split", [y], {"axis": 1, "sizes": (8, 4)}).outputs
    t = b.g.add_op("slice", y, starts=(4,), ends=(12,), axes=(1,))
    z = b.g.add_op("concat", b.conv(s1, 4), b.conv(s2, 4), b.conv(t, 4), axis=1)
    pruned = _check_exact(b.done(b.conv(z, 2)))
    split = next(n for n in pruned.nodes if n.op == "split")
    assert split.attrs["sizes"] == (4, 2)
    sl = next(n for n in pruned.nodes if n.op == "slice")
    assert (sl.attrs["starts"], sl.attrs["ends"]) == ((2,), (6,))


def test_depthwise_conv_groups_shrink_with_its_channels():
    b = Builder((1, 4, 6, 6), seed=4)
    y = b.relu(b.conv(b.x, 16, k=1))
    y = b.relu(b.conv(y, 16, groups=16))  # depthwise: its channels are y's
    g = b.done(b.conv(y, 3, k=1))
    pruned = _check_exact(g)
    dw = [n for n in pruned.nodes if n.op == "conv2d"][1]
    assert dw.attrs["groups"] == 8 and dw.inputs[1].type.shape == (8, 1, 3, 3)


def test_grouped_conv_shrinks_every_group_alike():
    """A grouped conv's channel is one index of every group: its input channel j of each
    group reads the weight's column j, so they go together; its groups stay."""
    b = Builder((1, 4, 4, 4), seed=5)
    y = b.relu(b.bn(b.conv(b.x, 8)))
    y = b.conv(y, 12, groups=2)  # 2 groups: 4 -> 6 channels each
    g = b.done(b.conv(b.relu(y), 2))
    dep = ChannelDependency(g)
    inner = [(grp.kind, grp.size, grp.width) for grp in dep.groups if grp.prunable]
    assert inner == [("channels", 4, 2), ("channels", 6, 2)]  # one index of both groups
    pruned = _check_exact(g)
    convs = [n for n in pruned.nodes if n.op == "conv2d"]
    assert [(c.attrs["groups"], c.inputs[1].type.shape) for c in convs] == [
        (1, (4, 4, 3, 3)), (2, (6, 2, 3, 3)), (1, (2, 6, 3, 3))]


def test_grouped_conv_feeding_a_residual_add_and_round_to():
    """Grouped convs around a residual add (ResNeXt-style), channels kept in multiples of 8
    features: 4 groups of 16 keep 8 indices of each group (8 x 4 = 32 channels)."""
    b = Builder((1, 3, 4, 4), seed=12)
    a = b.relu(b.conv(b.x, 64, k=1))
    r = b.conv(b.relu(b.conv(a, 64, groups=4)), 64, k=1)
    g = b.done(b.conv(b.relu(b.g.add_op("add", a, r)), 2, k=1))
    pruned = g.clone()
    prune_graph(pruned, ratio=0.5, round_to=8)
    verify(pruned)
    grouped = next(n for n in pruned.nodes if n.op == "conv2d" and n.attrs["groups"] == 4)
    assert grouped.inputs[1].type.shape == (32, 8, 3, 3)
    assert grouped.inputs[0].type.shape[1] == 32
    _check_exact(g, seed=12)


def test_grouped_transposed_conv_blocks_and_the_report_names_it():
    b = Builder((1, 4, 4, 4), seed=5)
    y = b.relu(b.conv(b.x, 8))
    w = b.const(8, 2, 2, 2)  # [C, O/groups, k, k], 4 groups
    y = b.g.add_op("conv_transpose2d", y, w, groups=4)
    g = b.done(b.conv(b.relu(y), 2))
    dep = ChannelDependency(g)
    blocked = [grp for grp in dep.groups if grp.size == 8]
    assert blocked and all(any("conv_transpose2d" in w for w in grp.blocked_by)
                           for grp in blocked)
    result = prune_graph(g, ratio=0.5)
    assert result.removed == 0 and any("conv_transpose2d" in b for b in result.blocked_ops)


def test_interface_channels_are_never_pruned():
    b = Builder((2, 6), seed=6)
    h = b.relu(b.linear(b.x, 16))
    g = b.done(b.linear(h, 4), h)  # h is also an output: its 16 channels stay
    dep = ChannelDependency(g)
    assert not any(grp.prunable for grp in dep.groups)
    assert any("graph output" in grp.blocked_by for grp in dep.groups if grp.size == 16)


def test_reshape_into_heads_prunes_whole_heads():
    b = Builder((2, 8), seed=7)
    h = b.relu(b.linear(b.x, 12))
    r = b.g.add_op("reshape", h, shape=(2, 3, 4))  # 3 heads of 4
    r = b.g.add_op("relu", r)
    f = b.g.add_op("reshape", r, shape=(2, 12))
    g = b.done(b.linear(f, 5))
    dep = ChannelDependency(g)
    heads = [grp for grp in dep.groups if grp.prunable]
    assert [grp.size for grp in heads] == [3]  # one channel per head, 4 features each
    pruned = _check_exact(g, ratio=0.34)
    assert [n.attrs["shape"] for n in pruned.nodes if n.op == "reshape"] == [(2, 2, 4), (2, 8)]


def test_bn_scale_importance_reads_gamma():
    b = Builder((1, 3, 4, 4), seed=8)
    y = b.conv(b.x, 4)
    gamma = b.g.add_const(np.array([1.0, 0.01, 2.0, -0.02], np.float32))
    y = b.g.add_op("batch_norm", y, b.const(4), b.const(4, positive=True), gamma, b.const(4))
    g = b.done(b.conv(b.relu(y), 2))
    dep = ChannelDependency(g)
    grp = next(grp for grp in dep.groups if grp.prunable)
    score = group_importance(dep, grp, "bn-scale")
    np.testing.assert_allclose(score, [1.0, 0.01, 2.0, 0.02], rtol=1e-6)
    prune_graph(g, ratio=0.5, importance="bn-scale")
    bn = next(n for n in g.nodes if n.op == "batch_norm")
    np.testing.assert_allclose(bn.inputs[3].const_data, [1.0, 2.0])


def test_round_to_and_ignore():
    assert [kept_count(n, 0.5, 8) for n in (64, 20, 8, 4)] == [32, 16, 8, 4]
    assert kept_count(10, 0.5, 1) == 5 and kept_count(3, 0.9, 1) == 1
    b = Builder((1, 3, 4, 4), seed=9)
    g = b.done(b.conv(b.relu(b.conv(b.x, 16)), 2))
    first = g.nodes[2]  # the first conv
    first.provenance = type(first.provenance)("torch:stem (aten.convolution.default)")
    kept = g.clone()
    result = prune_graph(kept, ratio=0.5, ignore=["stem"])
    assert result.removed == 0
    assert [r.ignored for r in result.groups if r.channels_before == 16] == [True]
    prune_graph(g, ratio=0.5, round_to=8)
    assert next(n for n in g.nodes if n.op == "conv2d").out.type.shape[1] == 8


def test_pass_in_a_pipeline_with_stats_and_bad_options():
    b = Builder((1, 3, 4, 4), seed=10)
    g = b.done(b.conv(b.relu(b.conv(b.x, 8)), 2))
    out = rtinfer.optimize(g, "prune-channels{ratio=0.25,importance=l1}", verify_each=True)
    assert next(n for n in out.nodes if n.op == "conv2d").out.type.shape[1] == 6
    # the user's graph is left as it was
    assert next(n for n in g.nodes if n.op == "conv2d").out.type.shape[1] == 8
    result = rtinfer.run_pipeline(g.clone(), "prune-channels{ratio=0.5}")
    assert result.stat("prune-channels", "channels-removed") == 4
    with pytest.raises(PruneError, match="ratio must be in"):
        prune_graph(g.clone(), ratio=1.0)
    with pytest.raises(PruneError, match="unknown importance 'l3'"):
        prune_graph(g.clone(), ratio=0.5, importance="l3")


def _random_graph(seed: int) -> Graph:
    """A random small conv net: conv/bn/relu chains, residual adds, concats, splits, slices,
    depthwise and grouped convs, ending in a flatten and a linear, or a global mean and a
    linear."""
    rng = np.random.default_rng(seed)
    b = Builder((1, 3, 6, 6), seed=seed)
    y = b.relu(b.conv(b.x, int(rng.choice([4, 6, 8]))))
    for _ in range(int(rng.integers(2, 6))):
        c = y.type.shape[1]
        kind = rng.choice(["conv", "bn", "residual", "concat", "depthwise", "split", "grouped",
                           "slice"])
        if kind == "conv":
            y = b.relu(b.conv(y, int(rng.choice([4, 6, 8])), k=int(rng.choice([1, 3]))))
        elif kind == "bn":
            y = b.relu(b.bn(b.conv(y, c)))
        elif kind == "residual":
            y = b.g.add_op("add", y, b.conv(b.relu(b.conv(y, 4)), c))
        elif kind == "concat":
            y = b.g.add_op("concat", y, b.relu(b.conv(y, 4, k=1)), axis=1)
        elif kind == "depthwise":
            y = b.relu(b.conv(y, c, groups=c))
        elif kind == "grouped" and c % 2 == 0:
            y = b.relu(b.conv(y, 2 * c, groups=2))
        elif kind == "slice" and c >= 4:
            y = b.relu(b.conv(b.g.add_op("slice", y, starts=(1,), ends=(c,), axes=(1,)), c))
        elif c >= 4:
            parts = b.g.create_node("split", [y], {"axis": 1, "sizes": (2, c - 2)}).outputs
            y = b.g.add_op("concat", b.conv(parts[1], 4), parts[0], axis=1)
    if rng.random() < 0.5:
        head = b.g.add_op("flatten", y)
    else:
        head = b.g.add_op("reduce_mean", y, axes=(2, 3))
    return b.done(b.linear(head, 3))


@pytest.mark.parametrize("seed", range(24))
def test_property_random_graphs_prune_exactly(seed):
    _check_exact(_random_graph(seed), seed=seed)


def _random_mlp(seed: int) -> Graph:
    """A random fully connected net over [batch, tokens, features]: linear/relu chains,
    residual adds, concats and splits along the features, a reshape into heads and back."""
    rng = np.random.default_rng(seed)
    b = Builder((2, 3, 6), seed=seed)
    y = b.relu(b.linear(b.x, int(rng.choice([4, 6, 8]))))
    for _ in range(int(rng.integers(2, 6))):
        c = y.type.shape[-1]
        kind = rng.choice(["linear", "residual", "concat", "split", "heads"])
        if kind == "linear":
            y = b.relu(b.linear(y, int(rng.choice([4, 6, 8]))))
        elif kind == "residual":
            y = b.g.add_op("add", y, b.linear(b.relu(b.linear(y, 8)), c))
        elif kind == "concat":
            y = b.g.add_op("concat", y, b.relu(b.linear(y, 4)), axis=-1)
        elif kind == "split" and c >= 4:
            parts = b.g.create_node("split", [y], {"axis": 2, "sizes": (c - 2, 2)}).outputs
            y = b.g.add_op("concat", parts[1], b.relu(b.linear(parts[0], 4)), axis=2)
        elif kind == "heads":
            h = b.relu(b.linear(y, 12))
            h = b.g.add_op("relu", b.g.add_op("reshape", h, shape=(2, 3, 4, 3)))
            y = b.g.add_op("reshape", h, shape=(2, 3, 12))
    return b.done(b.linear(y, 3))


@pytest.mark.parametrize("seed", range(16))
def test_property_random_mlps_prune_exactly(seed):
    _check_exact(_random_mlp(seed), seed=seed)


def test_apply_pruning_with_nothing_removed_leaves_the_graph():
    b = Builder((1, 3, 4, 4), seed=11)
    g = b.done(b.conv(b.relu(b.conv(b.x, 8)), 2))
    text = str(g)
    assert apply_pruning(g, ChannelDependency(g), np.zeros(0, np.int64), Rewriter(g)) == 0
    assert str(g) == text


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_models_prune_exactly(name):
    """ResNet-18 (residual adds, downsample shortcuts) and MobileNetV2 (depthwise convs,
    inverted residuals): every group prunable, and zeroed channels prune away exactly."""
    import torch

    from rtinfer import models

    torch.manual_seed(0)
    model = models.randomize_batchnorm(getattr(models, name)(num_classes=10))
    graph = rtinfer.capture(model, (torch.randn(1, 3, 32, 32),))
    dep = ChannelDependency(graph)
    layered = [g for g in dep.groups if g.size > 1]
    kept = [g.blocked_by for g in layered if not g.prunable]
    assert sorted(kept) == [["graph input x"], ["graph output"]]  # only the interface stays
    pruned = _check_exact(graph)
    assert sum(n.out.type.shape[1] for n in pruned.nodes if n.op == "conv2d") < 0.55 * sum(
        n.out.type.shape[1] for n in graph.nodes if n.op == "conv2d")


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_prunes_fused_graphs_exactly(seed):
    """After fold-batchnorm and fuse-epilogue (fused_conv2d with activations and residual
    adds, depthwise ones included) the same channels prune away with the same outputs."""
    g = _random_graph(seed)
    dep = ChannelDependency(g)
    rng = np.random.default_rng(seed)
    drop = np.concatenate([grp.channels[rng.permutation(grp.size)[:grp.size // 2]]
                           for grp in dep.groups if grp.prunable])
    _zero_channels(g, dep, drop)
    fused = rtinfer.optimize(g, "fold-constants,fold-batchnorm,fuse-epilogue,dce")
    assert "fused_conv2d" in fused.op_counts()
    x = rng.standard_normal(g.inputs[0].type.shape).astype(np.float32)
    result = prune_graph(fused, ratio=0.5)
    verify(fused)
    assert result.removed == len(drop)
    np.testing.assert_allclose(interpret(fused, x)[0], interpret(g, x)[0], rtol=1e-4, atol=1e-4)
