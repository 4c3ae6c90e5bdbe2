"""Every model of the zoo through the torch frontend, checked against eager torch."""

from __future__ import annotations

import numpy as np
import pytest

from .zoo import FAST, ZOO, run_model


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in ZOO])
def test_zoo_model_matches_eager(name):
    r = run_model(name)
    for got, want in zip(r["outputs"], r["eager"], strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_zoo_is_large_enough():
    assert len(ZOO) >= 15 and set(FAST) <= set(ZOO)


@pytest.mark.parametrize("name", ["bert", pytest.param("llama", marks=pytest.mark.slow)])
def test_zoo_dynamic_batch_and_sequence(name):
    import torch

    import rtinfer
    from rtinfer.ir import interpret

    from .zoo import text_inputs

    model, inputs = ZOO[name]()
    g = rtinfer.capture(model, inputs, dynamic_dims={k: {0: "B", 1: "S"} for k in inputs})
    assert [str(v.type) for v in g.inputs] == ["i64[B,S]"] * len(inputs)
    assert str(g.outputs[0].type) == "f32[B,S,32]"
    for b, s in [(2, 8), (3, 5)]:
        x = {k: v for k, v in text_inputs(batch=b, seq=s, seed=1).items() if k in inputs}
        with torch.no_grad():
            want = model(**x)[0].numpy()
        got = interpret(g, *[x[k].numpy() for k in g.meta["torch"]["input_names"]])
        got = got[0] if isinstance(got, tuple) else got
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
