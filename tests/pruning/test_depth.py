"""Depth pruning: whole residual blocks dropped by block influence, their residual path made
the identity.

Exactness: a block whose residual branch is exactly zero (and whose ReLU follows a ReLU) is
the identity, so dropping it must leave the outputs exactly as they were; it turns its input
least (influence 0), so it is the one that goes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer import models
from rtinfer.errors import PruneError
from rtinfer.ir import interpret
from rtinfer.ir.verifier import verify
from rtinfer.passes.pruning.prune_depth import find_blocks, prune_depth_graph
from tests.pruning.test_dependency import Builder


def _resnet_with_a_zero_block() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.resnet18(num_classes=10))
    with torch.no_grad():  # layer3.1's branch ends in a BatchNorm that now outputs zeros
        model.layer3[1].bn2.weight.zero_()
        model.layer3[1].bn2.bias.zero_()
    return model, torch.randn(2, 3, 16, 16)


def test_zero_residual_block_is_dropped_with_identical_outputs():
    model, x = _resnet_with_a_zero_block()
    before = copy.deepcopy(model.state_dict())
    pruned = rtinfer.prune(model, example_inputs=x, ratio=0.0, depth=1)
    report = pruned.report()
    # the blocks whose input and output types agree (the downsampling ones change both)
    assert report.blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert report.blocks_removed == ["layer3.1"]
    assert "residual blocks removed (1 of 5): layer3.1" in str(report)
    assert report.params_after < report.params_before - 1_000_000  # two 256x256x3x3 convs
    assert report.macs_after < report.macs_before
    verify(pruned.ir)
    convs = sum(n.op == "conv2d" for n in pruned.ir.nodes)
    assert convs == 20 - 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    for k, v in model.state_dict().items():  # the user's model is left as it was
        assert torch.equal(v, before[k]), k


def test_depth_with_channels_and_as_a_fraction():
    model, x = _resnet_with_a_zero_block()
    pruned = rtinfer.prune(model, example_inputs=x, ratio=0.5, depth=0.4)  # 2 of 5 blocks
    report = pruned.report()
    assert len(report.blocks_removed) == 2 and "layer3.1" in report.blocks_removed
    assert any(g.channels_after < g.channels_before for g in report.groups)
    verify(pruned.ir)
    assert pruned(x).shape == (2, 10)
    with pytest.raises(PruneError, match="depth=6: the model has 5 residual block"):
        rtinfer.prune(model, example_inputs=x, depth=6)
    with pytest.raises(PruneError, match=r"fraction of the blocks must be in \[0, 1\), got 1.5"):
        rtinfer.prune(model, example_inputs=x, depth=1.5)
    with pytest.raises(PruneError, match="depth must be a number of blocks"):
        rtinfer.prune(model, example_inputs=x, depth="2")


def _two_blocks(zero_second: bool) -> tuple:
    """relu(conv) -> two residual blocks relu(a + conv(relu(conv(a)))) -> mean -> linear."""
    b = Builder((1, 4, 5, 5), seed=3)
    y = b.relu(b.conv(b.x, 8))
    for k in range(2):
        branch = b.conv(b.relu(b.conv(y, 8)), 8)
        if zero_second and k == 1:
            w = branch.producer.inputs[1]
            w.producer.attrs["value"] = np.zeros(w.type.shape, np.float32)
            bias = branch.producer.inputs[2]
            bias.producer.attrs["value"] = np.zeros(bias.type.shape, np.float32)
        y = b.relu(b.g.add_op("add", y, branch))
    head = b.g.add_op("reduce_mean", y, axes=(2, 3))
    return b.done(b.linear(head, 3)), b.rng.standard_normal((1, 4, 5, 5)).astype(np.float32)


def test_prune_depth_pass_drops_the_zero_block_exactly():
    g, x = _two_blocks(zero_second=True)
    blocks = find_blocks(g)
    assert [len(blk.nodes) for blk in blocks] == [5, 5]  # conv, relu, conv, add, relu
    want = interpret(g, x)
    out = rtinfer.optimize(g, "prune-depth{depth=1}", verify_each=True)
    assert sum(n.op == "conv2d" for n in out.nodes) == 3
    np.testing.assert_array_equal(interpret(out, x), want)
    assert sum(n.op == "conv2d" for n in g.nodes) == 5  # the user's graph stays
    result = rtinfer.run_pipeline(g.clone(), "prune-depth{depth=2}")
    assert result.stat("prune-depth", "blocks-removed") == 2


def test_blocks_the_region_rule_refuses():
    """A residual add whose branch leaks a value out of the block is not a block."""
    b = Builder((1, 4, 5, 5), seed=4)
    y = b.relu(b.conv(b.x, 8))
    inner = b.relu(b.conv(y, 8))
    s = b.relu(b.g.add_op("add", y, b.conv(inner, 8)))
    g = b.done(b.conv(s, 2), inner)  # the branch's inner value is also an output
    assert find_blocks(g) == []
    result = prune_depth_graph(g, 0)
    assert result.removed == [] and result.blocks == []
