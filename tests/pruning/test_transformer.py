"""Transformer pruning on the real all-MiniLM-L6-v2: FFN neurons and whole attention heads
(q, k, v output rows by head, the output projection's input columns, the reshape-into-heads
shapes), hidden-state distillation, and the per-kind ratio.

Exactness: heads and neurons whose weights are zero do not reach the outputs, so pruning them
must give the zeroed model's outputs; the pruned IR must verify and compile natively.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import rtinfer
from rtinfer import models
from rtinfer.errors import PruneError
from rtinfer.ir.verifier import verify
from rtinfer.passes.pruning.dependency import ChannelDependency

HEADS, HEAD_DIM, FFN = 12, 32, 1536


@pytest.fixture(scope="module")
def minilm():
    return models.minilm()


def _zero_heads_and_neurons(model: torch.nn.Module, seed: int = 0
                            ) -> tuple[torch.nn.Module, list[np.ndarray], list[np.ndarray]]:
    """A copy of ``model`` with 4 heads and 768 FFN neurons of every layer zeroed (the rows
    that make them, the columns that read them), and which ones."""
    rng = np.random.default_rng(seed)
    zeroed = copy.deepcopy(model)
    heads, neurons = [], []
    with torch.no_grad():
        for layer in zeroed.encoder.layer:
            drop = np.sort(rng.permutation(HEADS)[:4])
            feats = torch.from_numpy(
                (drop[:, None] * HEAD_DIM + np.arange(HEAD_DIM)).reshape(-1))
            att = layer.attention
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight[feats] = 0
                lin.bias[feats] = 0
            att.output.dense.weight[:, feats] = 0
            n = np.sort(rng.permutation(FFN)[:FFN // 2])
            layer.intermediate.dense.weight[n] = 0
            layer.intermediate.dense.bias[n] = 0
            layer.output.dense.weight[:, n] = 0
            heads.append(drop)
            neurons.append(n)
    return zeroed, heads, neurons


def test_minilm_heads_and_ffn_prune_exactly_and_compile(minilm):
    x = models.minilm_inputs(["a graph compiler for real-time inference",
                              "the weights of the dense model stay as they were"], seq=16)
    zeroed, heads, neurons = _zero_heads_and_neurons(minilm)
    before = zeroed.encoder.layer[0].attention.self.query.weight.clone()
    pruned = rtinfer.prune(zeroed, example_inputs=x, ratio={"ffn": 0.5, "heads": 1 / 3})
    assert torch.equal(zeroed.encoder.layer[0].attention.self.query.weight, before)

    report = pruned.report()
    by_kind: dict[str, list] = {}
    for g in report.groups:
        by_kind.setdefault(g.kind, []).append((g.channels_before, g.channels_after,
                                               g.blocked_by))
    assert by_kind["heads"] == [(12, 8, [])] * 6  # 32-wide heads: round_to=8 counts features
    assert by_kind["ffn"] == [(1536, 768, [])] * 6 + [(384, 384, ["graph output"])]  # pooler
    assert by_kind["hidden"] == [(384, 384, ["graph output"])]  # the residual stream
    assert report.macs_after < 0.6 * report.macs_before

    # the zeroed heads and neurons are the ones that went, every other weight kept as it was
    weights = dict(pruned.named_parameters())  # named after the original weights
    for k, layer in enumerate(zeroed.encoder.layer):
        kept_heads = np.setdiff1d(np.arange(HEADS), heads[k])
        feats = (kept_heads[:, None] * HEAD_DIM + np.arange(HEAD_DIM)).reshape(-1)
        kept_neurons = np.setdiff1d(np.arange(FFN), neurons[k])
        prefix = f"encoder.layer.{k}."
        pairs = [("attention.self.query.weight", layer.attention.self.query.weight[feats]),
                 ("attention.self.value.bias", layer.attention.self.value.bias[feats]),
                 ("attention.output.dense.weight",
                  layer.attention.output.dense.weight[:, feats]),
                 ("intermediate.dense.weight", layer.intermediate.dense.weight[kept_neurons]),
                 ("output.dense.weight", layer.output.dense.weight[:, kept_neurons])]
        for name, want in pairs:
            got = weights["net." + (prefix + name).replace(".", "_")]
            assert torch.equal(got.detach(), want), prefix + name
    shapes = [n.attrs["shape"] for n in pruned.ir.nodes if n.op == "reshape"]
    assert not any(HEADS in s for s in shapes if len(s) == 4)  # every split into 8 heads
    verify(pruned.ir)

    with torch.no_grad():
        want = zeroed(**x)
        got = pruned(**x)
        again = pruned(x["input_ids"], x["attention_mask"])
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)
    assert torch.equal(again.last_hidden_state, got.last_hidden_state)
    with pytest.raises(PruneError, match="no input named token_type_ids .*its inputs: "
                                         "input_ids, attention_mask"):
        pruned(**x, token_type_ids=x["input_ids"])
    with pytest.raises(PruneError, match="input 'attention_mask' is missing"):
        pruned(input_ids=x["input_ids"])

    fast = rtinfer.compile(pruned.to_ir(), backend="native")
    out = fast(x["input_ids"], x["attention_mask"])
    torch.testing.assert_close(out.last_hidden_state, got.last_hidden_state,
                               rtol=1e-4, atol=1e-4)
    # the module itself compiles too (re-captured by torch.export)
    again = rtinfer.compile(pruned, example_inputs=x, backend="native", cache=False)
    out = again(**x)
    torch.testing.assert_close(out["last_hidden_state"] if isinstance(out, dict)
                               else out.last_hidden_state, got.last_hidden_state,
                               rtol=1e-4, atol=1e-4)


class _Block(torch.nn.Module):
    """linear -> LayerNorm -> linear: the 16 features in between are a "hidden" group."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(8, 32)
        self.down = torch.nn.Linear(32, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.down(torch.relu(self.up(x)))))


def test_per_kind_ratio_leaves_the_hidden_size_whole_unless_named():
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(4, 8)
    plain = rtinfer.prune(model, example_inputs=x, ratio=0.5, round_to=1)
    kinds = {g.kind: (g.channels_before, g.channels_after) for g in plain.report().groups
             if not g.blocked_by}  # the model's input and output features stay
    assert kinds == {"ffn": (32, 16), "hidden": (16, 16)}
    hidden_only = rtinfer.prune(model, example_inputs=x, ratio={"hidden": 0.5}, round_to=1)
    kinds = {g.kind: (g.channels_before, g.channels_after)
             for g in hidden_only.report().groups if not g.blocked_by}
    assert kinds == {"ffn": (32, 32), "hidden": (16, 8)}
    verify(hidden_only.ir)
    norm = next(n for n in hidden_only.ir.nodes if n.op == "layer_norm")
    assert norm.inputs[1].type.shape == (8,)
    assert hidden_only(x).shape == (4, 4)
    assert "0.5 of hidden" in str(hidden_only.report())

    with pytest.raises(PruneError, match=r"unknown group kind\(s\) 'neurons' .*kinds: "
                                         r"channels, ffn, heads, hidden"):
        rtinfer.prune(model, example_inputs=x, ratio={"neurons": 0.5})
    with pytest.raises(PruneError, match=r"ratio must be in \[0, 1\), got 1.0 for 'ffn'"):
        rtinfer.prune(model, example_inputs=x, ratio={"ffn": 1.0})


def test_hidden_distillation_pulls_the_student_to_the_teacher():
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(64, 8)
    student = rtinfer.prune(model, example_inputs=x[:4], ratio=0.75, round_to=1)

    def gap() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(student(x), model(x)).item()

    start = gap()
    rtinfer.distill(student, teacher=model, data=[(x[:32],), (x[32:],)], steps=60,
                    loss="hidden", lr=3e-3, progress=False)
    assert gap() < 0.5 * start
    with pytest.raises(PruneError, match=r"hidden states of the same shapes.*\[\[4, 4\]\] "
                                         r"and \[\[4, 2\]\]"):
        rtinfer.distill(student, teacher=lambda t: model(t)[:, :2], data=[(x[:4],)], steps=1,
                        loss="hidden", progress=False)
    with pytest.raises(PruneError, match="batch dict must hold tensors; mask is not one"):
        rtinfer.distill(student, teacher=model, data=[{"x": x[:4], "mask": "no"}], steps=1,
                        loss="hidden", progress=False)


def test_activation_importance_reads_what_reaches_the_next_layer():
    """A neuron with large weights that ReLU keeps at zero on the data adds nothing to the
    next layer: activation importance (|w_ij| * ||x_j|| of the reading layer) prunes it where
    l2 (weight magnitude) keeps it; batches may be dicts of named inputs."""
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(64, 8).abs()
    dead = [0, 5, 9, 17]
    with torch.no_grad():
        model.up.bias.fill_(1.0)  # the other neurons fire on some inputs
        model.up.weight[dead] = -3.0  # large, and negative on positive inputs: ReLU -> 0
        model.up.bias[dead] = 0.0
    l2 = rtinfer.prune(model, example_inputs=x[:4], ratio=0.125, round_to=1)
    act = rtinfer.prune(model, example_inputs=x[:4], ratio=0.125, round_to=1,
                        importance="activation", data=[(x[:32],), {"x": x[32:]}])

    def kept_up_rows(pruned) -> np.ndarray:
        up = next(n for n in pruned.ir.nodes if n.op == "linear")
        return up.inputs[1].const_data

    assert any(np.allclose(r, -3.0) for r in kept_up_rows(l2))  # l2 keeps the loud dead ones
    assert not any(np.allclose(r, -3.0) for r in kept_up_rows(act))
    with torch.no_grad():  # the dead neurons went: the outputs are the dense model's
        torch.testing.assert_close(act(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(PruneError, match="importance='activation' needs data"):
        rtinfer.prune(model, example_inputs=x[:4], importance="activation")
    with pytest.raises(PruneError, match=r"data batch 1: the model's input\(s\) x are missing"):
        rtinfer.prune(model, example_inputs=x[:4], importance="activation",
                      data=[{"y": x[:4]}])


class _Tokens(torch.nn.Module):
    """[N, S, 8] -> [N, S, 16] token states: the shape a sentence encoder returns."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(8, 32)
        self.down = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_activation_importance_leaves_padding_out():
    """Neurons that fire only on padding tokens add nothing to the real tokens' states: with
    an attention_mask in the batch dicts activation importance prunes them (the real tokens'
    outputs stay exactly the dense model's); measured over every position it keeps them."""
    torch.manual_seed(0)
    model, x = _Tokens().eval(), torch.randn(64, 5, 8).abs()
    x[..., 7] = 0.0
    x[:, 3:, 7] = 10.0  # the last two positions of every sequence are padding
    mask = torch.ones(64, 5, dtype=torch.int64)
    mask[:, 3:] = 0
    pad = [0, 5, 9, 17]
    with torch.no_grad():
        model.up.bias.fill_(1.0)  # the other neurons fire on the real tokens
        model.up.weight[:, 7] = 0.0
        model.up.weight[pad] = -1.0  # negative on real tokens, large on the padding feature
        model.up.weight[pad, 7] = 5.0
        model.up.bias[pad] = 0.0
    masked = rtinfer.prune(model, example_inputs=x[:4], ratio=0.125, round_to=1,
                           importance="activation",
                           data=[{"x": x[:32], "attention_mask": mask[:32]},
                                 {"x": x[32:], "attention_mask": mask[32:]}])
    everywhere = rtinfer.prune(model, example_inputs=x[:4], ratio=0.125, round_to=1,
                               importance="activation", data=[(x[:32],), (x[32:],)])

    def kept_pad_rows(pruned) -> int:
        up = next(n for n in pruned.ir.nodes if n.op == "linear").inputs[1].const_data
        return sum(bool(np.allclose(r[:7], -1.0)) for r in up)

    assert kept_pad_rows(masked) == 0 and kept_pad_rows(everywhere) == 4
    with torch.no_grad():
        torch.testing.assert_close(masked(x)[:, :3], model(x)[:, :3], rtol=1e-5, atol=1e-5)


def test_embedding_distillation_with_a_cosine_schedule():
    """loss="embedding" pulls the mean-pooled sentence embedding's direction to the
    teacher's; the cosine schedule ends at a learning rate of 0."""
    torch.manual_seed(0)
    model, x = _Tokens().eval(), torch.randn(64, 5, 8)
    student = rtinfer.prune(model, example_inputs=x[:4], ratio=0.75, round_to=1)

    def cosine() -> float:
        with torch.no_grad():
            s, t = student(x).mean(1), model(x).mean(1)
        return torch.nn.functional.cosine_similarity(s, t, dim=-1).mean().item()

    start = cosine()
    rtinfer.distill(student, teacher=model, data=[(x[:32],), (x[32:],)], steps=80,
                    loss="embedding", lr=1e-2, schedule="cosine", warmup=0.1,
                    weight_decay=0.01, progress=False)
    assert cosine() > max(0.9, start + 0.5 * (1 - start))
    with pytest.raises(PruneError, match="unknown schedule 'linear'"):
        rtinfer.distill(student, teacher=model, data=[(x,)], steps=1, schedule="linear",
                        progress=False)
    with pytest.raises(PruneError, match="warmup must be a fraction"):
        rtinfer.distill(student, teacher=model, data=[(x,)], steps=1, warmup=1.0,
                        progress=False)
    flat = rtinfer.prune(_Block().eval(), example_inputs=x[:4, 0], ratio=0.5, round_to=1)
    with pytest.raises(PruneError, match=r"mean-pools token states \[N, S, H\]; the last "
                                         r"hidden state is \[4, 4\]"):
        rtinfer.distill(flat, teacher=_Block().eval(), data=[(x[:4, 0],)], steps=1,
                        loss="embedding", progress=False)


def test_distill_takes_its_optimizer_settings_from_the_recipe_of_its_loss():
    """Settings left out come from RECIPES[loss] (pretrained transformers: a gentler rate,
    warmup and a cosine decay); embedding_weight 0 leaves the hidden-state loss alone."""
    from rtinfer.prune import RECIPES

    torch.manual_seed(0)
    model, x = _Tokens().eval(), torch.randn(32, 5, 8)
    data = [(x[:16],), (x[16:],)]
    base = rtinfer.prune(model, example_inputs=x[:4], ratio=0.5, round_to=1)

    def trained(**kw) -> list[torch.Tensor]:
        student = copy.deepcopy(base)
        rtinfer.distill(student, teacher=model, data=data, steps=12, progress=False, **kw)
        return [p.detach() for p in student.parameters()]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))

    r = RECIPES["embedding"]
    assert (r.lr, r.schedule, r.warmup, r.weight_decay, r.steps) == (5e-4, "cosine", 0.05,
                                                                     0.01, 1500)
    h = RECIPES["hidden"]
    assert (h.lr, h.schedule, h.warmup, h.weight_decay, h.steps) == (5e-4, "cosine", 0.05,
                                                                     0.01, 600)
    assert RECIPES["logits"].schedule == "constant"
    default = trained(loss="embedding")
    assert same(default, trained(loss="embedding", lr=r.lr, schedule=r.schedule,
                                 warmup=r.warmup, weight_decay=r.weight_decay))
    assert not same(default, trained(loss="embedding", lr=1e-3, schedule="constant"))
    assert not same(default, trained(loss="embedding", embedding_weight=10.0))
    assert same(trained(loss="hidden"), trained(loss="embedding", embedding_weight=0.0))

    class Counted(list):  # counts the batches distill draws: one per optimizer step
        drawn = 0

        def __iter__(self):
            for b in super().__iter__():
                Counted.drawn += 1
                yield b

    for loss, want in (("embedding", 1500), ("hidden", 600)):  # steps left out: the recipe's
        Counted.drawn = 0
        rtinfer.distill(copy.deepcopy(base), teacher=model, data=Counted(data), loss=loss,
                        progress=False)
        assert Counted.drawn == want, loss
    with pytest.raises(PruneError, match="lr must be > 0 and embedding_weight >= 0, got 0.0"):
        rtinfer.distill(base, teacher=model, data=data, steps=1, lr=0.0, progress=False)
    with pytest.raises(PruneError, match="embedding_weight >= 0, got .* and -1"):
        rtinfer.distill(base, teacher=model, data=data, steps=1, embedding_weight=-1,
                        progress=False)


# -- accuracy on real sentences ---------------------------------------------------------------

def stdlib_sentences() -> list[str]:
    return models.english_sentences()


def test_english_corpus_is_real_prose_disjoint_from_the_stdlib_sentences():
    """The training corpus: thousands of distinct docstring sentences of installed packages,
    sorted (a seeded shuffle is the same on every run), prose rather than code, and none of
    them one of english_sentences(), so a held-out split of those is never trained on."""
    from rtinfer.errors import RtinferError

    corpus = models.english_corpus(min_sentences=5000)
    assert corpus == sorted(set(corpus))
    assert not set(corpus) & set(stdlib_sentences())
    assert models.english_corpus() == corpus  # the same list again (computed once)
    for s in corpus:
        assert 30 <= len(s) <= 200 and len(s.split()) >= 6 and s.isascii(), s
        assert s[0].isupper() and s[-1] in ".!?", s
        assert not any(c in s for c in "<>{}[]=_`|\\") and "::" not in s, s
    # the numpy, scipy, scikit-learn and torch documentation are all in it
    words = " ".join(corpus)
    for topic in ("array", "distribution", "estimator", "tensor"):
        assert words.count(topic) > 50, topic
    corpus.clear()  # the caller's list is its own
    assert len(models.english_corpus()) > 5000
    with pytest.raises(RtinferError, match=r"english_corpus found \d+ sentences, fewer than "
                                           r"min_sentences=10000000"):
        models.english_corpus(min_sentences=10_000_000)


def _embed(out, mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding of all-MiniLM-L6-v2: token states mean-pooled over the mask,
    L2-normalized (sentence-transformers' pipeline for this model)."""
    m = mask.unsqueeze(-1).float()
    e = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


MINILM_STEPS = 1500  # RECIPES["embedding"].steps; docs/pruning.md: the cosine against steps


@pytest.mark.slow
def test_minilm_pruned_and_distilled_keeps_its_embeddings(minilm):
    """Half the FFN neurons and a third of the heads pruned by activation importance (64
    training sentences, padding left out), then distilled with the sentence-encoder recipe
    (distill's defaults for loss="embedding": every layer's hidden states plus the
    mean-pooled embedding's 1 - cosine, padding left out; AdamW 5e-4, cosine schedule, 5%
    warmup) for 1500 steps of 16 shuffled sentences: the stdlib docstring sentences not held
    out plus english_corpus(), about 13,000; mean embedding cosine to the dense model on 128
    held-out stdlib sentences: 0.9519 measured (0.7211 right after pruning), the issue's
    0.95 (docs/pruning.md has the curve). The run is deterministic (seeded, one thread), but
    english_corpus() follows the installed packages' docstrings. ~8 min on two idle cores, 31
    on a loaded one. One thread: on a shared 2-core machine a second intra-op thread mostly
    spins."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sentences = stdlib_sentences()
    assert len(sentences) > 1500
    order = np.random.default_rng(0).permutation(len(sentences))
    held = [sentences[i] for i in order[:128]]
    train = [sentences[i] for i in order[128:]] + models.english_corpus(min_sentences=5000)
    assert not set(held) & set(train)
    teacher = copy.deepcopy(minilm)
    teacher.config.output_hidden_states = True  # every layer's states to distill

    def tokens(texts: list[str]) -> dict[str, torch.Tensor]:
        return models.minilm_inputs(texts, seq=32)

    pruned = rtinfer.prune(teacher, example_inputs=tokens(train[:2]),
                           ratio={"ffn": 0.5, "heads": 1 / 3}, importance="activation",
                           data=[tokens(train[i:i + 16]) for i in range(0, 64, 16)])
    held_x = tokens(held)
    with torch.no_grad():
        want = _embed(minilm(**held_x), held_x["attention_mask"])

    def cosine() -> float:
        with torch.no_grad():
            got = _embed(pruned(**held_x), held_x["attention_mask"])
        return (got * want).sum(-1).mean().item()

    start = cosine()
    rng = np.random.default_rng(1)
    batches = []
    while len(batches) < MINILM_STEPS:  # shuffled epochs of 16 distinct sentences
        p = rng.permutation(len(train))
        batches += [tokens([train[i] for i in p[k:k + 16]]) for k in range(0, len(p) - 15, 16)]
    try:
        rtinfer.distill(pruned, teacher=teacher, data=batches[:MINILM_STEPS],
                        loss="embedding", progress=False)  # the recipe's 1500 steps
    finally:
        torch.set_num_threads(old_threads)
    end = cosine()
    print(f"MiniLM ffn 0.5 + heads 1/3: held-out embedding cosine {start:.4f} pruned, "
          f"{end:.4f} distilled ({MINILM_STEPS} steps)")
    assert 0.7 < start < 0.75  # activation importance measured 0.721 right after pruning
    assert end >= 0.95  # the bar for the pruned encoder


def test_fused_multi_head_attention_prunes_whole_heads_exactly():
    """After fusion the heads live inside multi_head_attention's packed last axes: a head
    goes from q, k, v and the output at once, and num_heads follows."""
    from tests.pruning.test_dependency import Builder, _check_exact

    b = Builder((2, 6, 16), seed=3)
    q, k, v = b.linear(b.x, 16), b.linear(b.x, 16), b.linear(b.x, 24)  # 4 heads: E 4, Ev 6
    o = b.g.add_op("multi_head_attention", q, k, v, num_heads=4)
    g = b.done(b.linear(o, 16))
    heads = [grp for grp in ChannelDependency(g).groups if grp.prunable]
    assert [(grp.kind, grp.size, grp.width) for grp in heads] == [("heads", 4, 4)]
    pruned = _check_exact(g, ratio=0.25)
    mha = next(n for n in pruned.nodes if n.op == "multi_head_attention")
    assert mha.attrs["num_heads"] == 3
    assert [t.type.shape[-1] for t in mha.inputs] == [12, 12, 18]
