"""``rtinfer.compile(prune=...)``: prune -> distill -> int8 under one accuracy budget, on a CNN
trained here on scikit-learn's digits and judged on held-out digits."""

from __future__ import annotations

import pytest
import torch

import rtinfer
from rtinfer.errors import PruneError, QuantizeError
from rtinfer.simplify import SimplifyReport

datasets = pytest.importorskip("sklearn.datasets")


# the dense digits model, trained once per module on one thread (shared with the pruning tests)
from tests.pruning.test_prune_api import DigitsCNN, _one_thread, digits  # noqa: E402,F401


def _batches(x, y, idx, size=64):
    return [(x[idx[i:i + size]], y[idx[i:i + size]]) for i in range(0, len(idx), size)]


def _top1(fn, x, y) -> float:
    with torch.no_grad():
        hits = sum(int(fn(x[i:i + 1]).argmax(1).item() == int(y[i])) for i in range(len(x)))
    return 100.0 * hits / len(x)


def test_prune_distill_int8_within_one_budget_on_held_out_digits(digits):  # noqa: F811
    model, x, y, train, test = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    cm = rtinfer.compile(
        model, example_inputs=x[:1], backend="torch", prune=0.5, precision="int8",
        calibration=[x[i:i + 1] for i in train[:32]], train_data=_batches(x, y, train),
        validation=[(x[test], y[test])], accuracy_budget=0.01, distill_steps=300)
    dense = _top1(model, x[test], y[test])
    fast = _top1(cm, x[test], y[test])
    assert fast >= dense - 1.0, (dense, fast)  # the budget, checked here independently

    rep = SimplifyReport.from_record(cm.info.simplify)
    assert [r.step.split(" (")[0] for r in rep.rows] == [
        "dense", "prune 0.5", "distill 300 steps", "int8", "compiled"]
    d, p, s, q, c = rep.rows
    assert d.metric == pytest.approx(dense) and c.metric == pytest.approx(fast)
    assert rep.metric == "top-1" and rep.budget == 0.01 and rep.within_budget is True
    assert not rep.notes  # nothing backed off
    # half the channels: about a quarter of the MACs and parameters, same for every later step
    assert 0.22 < p.macs / d.macs < 0.3 and 0.22 < p.params / d.params < 0.3
    assert s.macs == q.macs == c.macs == p.macs
    # pruning alone loses accuracy, distillation wins it back
    assert p.metric < s.metric and s.metric >= dense - 0.75
    assert all(r.latency_ms > 0 for r in (d, s, q, c)) and p.latency_ms is None
    assert "distill 300 steps (logits)" in s.step and q.step.startswith("int8 (")
    assert cm.info.int8 is not None and cm.info.int8["layers"]
    text = cm.report()
    assert "prune -> distill -> int8 (budget: top-1 drop at most 1 pt; within " \
           "budget" in text and "distill 300 steps (logits)" in text
    for k, v in model.state_dict().items():  # the user's model is left as it was
        assert torch.equal(v, before[k])


def test_a_step_that_breaks_the_budget_backs_off_and_says_so(digits):  # noqa: F811
    """A budget no pruning can meet (1e-9 of relative output error, no labels): each ratio
    tried is noted, and the model stays dense; the compiled model is then the dense one."""
    model, x, y, train, test = digits
    torch.manual_seed(0)
    cm = rtinfer.compile(model, example_inputs=x[:1], backend="torch", prune=0.5,
                         train_data=_batches(x, y, train[:256]), validation=[x[test[:64]]],
                         accuracy_budget=1e-9, distill_steps=5)
    rep = SimplifyReport.from_record(cm.info.simplify)
    assert rep.metric == "relative error"
    assert [n.split(" + ")[0] for n in rep.notes] == ["prune 0.5", "prune 0.3", "prune 0.18"]
    assert rep.notes[0].endswith("; ratio backed off")
    assert rep.notes[-1].endswith("; the model stays dense")
    assert [r.step for r in rep.rows] == ["dense (eager fp32)", "compiled (torch)"]
    assert "not pruned" in rep.rows[0].note
    assert rep.rows[1].metric < 1e-5 and rep.rows[1].cosine > 0.99999
    assert "back-off: prune 0.5 + distill: relative error" in cm.report()
    assert [n.inputs[1].type.shape[0] for n in cm.ir.nodes if n.op.endswith("conv2d")] == [
        32, 64, 64]


@pytest.mark.parametrize("kwargs,message", [
    (dict(prune=0.5), "prune= needs train_data=batches"),
    (dict(prune=0.5, train_data=[(0,)], accuracy_budget=0.01),
     "accuracy_budget with prune= is measured on held-out data: give validation="),
    (dict(train_data=[()]), "train_data go(es) with prune="),
    (dict(prune="half", train_data=[()]), "prune= is the fraction of channels removed"),
    (dict(prune=1.5, train_data=[()]), "prune=1.5: ratio must be in [0, 1)"),
    (dict(prune={"chan": 0.5}, train_data=[()]), "unknown group kind(s) 'chan'"),
    (dict(prune=0.5, train_data=[()], distill_steps=0), "distill_steps must be a positive int"),
    (dict(prune=0.5, train_data=[()], distill_loss="mse"), "distill_loss='mse': choose one of"),
    (dict(prune=0.5, train_data=[()], validation=[(torch.zeros(2, 1, 8, 8), "a")]),
     "validation batch 0: a batch must be tensors"),
    (dict(prune=0.5, train_data=[()], accuracy_budget=-1.0, validation=[]),
     "accuracy_budget must be a positive number"),
])
def test_bad_combinations_are_clear_errors(kwargs, message):
    model = DigitsCNN().eval()
    with pytest.raises(PruneError) as e:
        rtinfer.compile(model, example_inputs=torch.zeros(1, 1, 8, 8), backend="torch",
                        cache=False, **kwargs)
    assert message in str(e.value)


def test_int8_pipeline_still_needs_calibration():
    with pytest.raises(QuantizeError, match="precision='int8' needs calibration"):
        rtinfer.compile(DigitsCNN().eval(), example_inputs=torch.zeros(1, 1, 8, 8),
                        backend="torch", prune=0.5, precision="int8", train_data=[()])


def test_prune_needs_a_torch_module(tmp_path):
    ir = tmp_path / "g.ir"
    ir.write_text("func @main(%x: f32[2,4]) -> f32[2,4] {\n  %y = relu(%x)\n  return %y\n}\n")
    with pytest.raises(PruneError, match="prune= needs a torch nn.Module"):
        rtinfer.compile(str(ir), prune=0.5, train_data=[()], backend="torch")


class _Encoder(torch.nn.Module):
    """A sentence encoder in miniature: token ids and an attention mask in, token states
    [N, S, 16] out (one residual FFN), as all-MiniLM-L6-v2's last_hidden_state."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 16)
        self.up = torch.nn.Linear(16, 64)
        self.down = torch.nn.Linear(64, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        return h + self.down(torch.relu(self.up(h)))


def _token_batches(seed: int):
    """batch(n): n seeded random sentences of 2-6 tokens padded to 6, as a tokenizer gives."""
    g = torch.Generator().manual_seed(seed)

    def batch(n: int) -> dict[str, torch.Tensor]:
        mask = (torch.arange(6) < torch.randint(2, 7, (n, 1), generator=g)).long()
        return {"input_ids": torch.randint(1, 40, (n, 6), generator=g) * mask,
                "attention_mask": mask}
    return batch


def test_a_sentence_encoder_gets_the_transformer_recipe():
    """Named inputs with an attention_mask and token states out: activation importance on the
    training batches and loss="embedding" (the report names both), and the distilled model's
    mean-pooled embeddings are closer to the dense model's than the pruned ones."""
    from rtinfer.simplify import default_loss

    torch.manual_seed(0)
    model = _Encoder().eval()
    batch = _token_batches(seed=1)
    train, held = [batch(16) for _ in range(8)], batch(32)
    assert default_loss(model, held) == "embedding"
    assert default_loss(model, (held["input_ids"], held["attention_mask"])) == "hidden"
    assert default_loss(DigitsCNN().eval(), torch.zeros(2, 1, 8, 8)) == "logits"
    cm = rtinfer.compile(model, example_inputs=batch(2), backend="torch", prune={"ffn": 0.75},
                         train_data=train, validation=[held], distill_steps=60, cache=False)
    rep = SimplifyReport.from_record(cm.info.simplify)
    d, p, s, c = rep.rows
    assert p.step == "prune ffn 0.75 (activation)" and s.step == "distill 60 steps (embedding)"
    assert p.params < d.params and p.cosine < s.cosine
    # judged as its users judge it: the mean-pooled embeddings' cosine to the dense model's
    assert rep.metric == "embedding error" and d.metric == 0.0
    assert s.metric < p.metric  # the embedding error falls with distillation
    with torch.no_grad():
        mask = held["attention_mask"].unsqueeze(-1).float()
        ref = (model(**held) * mask).sum(1) / mask.sum(1)
        out = torch.cat([torch.as_tensor(cm(**{k: t[i:i + 2] for k, t in held.items()}))
                         for i in range(0, 32, 2)])  # compiled for the example's batch of 2
        got = (out * mask).sum(1) / mask.sum(1)
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1).mean().item()
    assert c.cosine == pytest.approx(cos, abs=1e-5) and c.metric == pytest.approx(1 - cos,
                                                                                  abs=1e-5)
    assert "1-emb.cos" in cm.report()


def test_a_sentence_encoder_budget_is_its_embedding_cosine():
    """accuracy_budget for a sentence encoder is 1 - embedding cosine: a budget no pruning
    meets backs the ratio off (the note names the embedding error), one it meets holds."""
    torch.manual_seed(0)
    model = _Encoder().eval()
    batch = _token_batches(seed=2)
    train, held = [batch(16) for _ in range(4)], batch(32)
    tight = rtinfer.compile(model, example_inputs=batch(2), backend="torch",
                            prune={"ffn": 0.75}, train_data=train, validation=[held],
                            accuracy_budget=1e-9, distill_steps=5, cache=False)
    rep = SimplifyReport.from_record(tight.info.simplify)
    assert rep.metric == "embedding error" and len(rep.notes) == 3
    assert "prune ffn 0.75 + distill: embedding error (1 - cosine)" in rep.notes[0]
    assert "budget: mean embedding cosine at least 1" in tight.report()
    loose = rtinfer.compile(model, example_inputs=batch(2), backend="torch",
                            prune={"ffn": 0.5}, train_data=train, validation=[held],
                            accuracy_budget=0.5, distill_steps=5, cache=False)
    rep = SimplifyReport.from_record(loose.info.simplify)
    assert rep.within_budget and not rep.notes and rep.rows[-1].cosine >= 0.5
