"""``rtinfer.prune`` and ``rtinfer.distill`` on real data: a small CNN trained on scikit-learn's
digits (8x8 images, 10 classes), half of its channels pruned, its accuracy distilled back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import rtinfer
from rtinfer.errors import PruneError
from rtinfer.ir import interpret
from rtinfer.ir.verifier import verify

datasets = pytest.importorskip("sklearn.datasets")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions run fastest on one thread, and the machine is shared: intra-op
    threads only contend (36 s instead of 4 s to train here)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits(_one_thread):
    """(dense model, images, labels, train indices, held-out indices), seeded."""
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(8):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x, y, train, test


def _top1(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def pruned(digits):
    model, x, *_ = digits
    return rtinfer.prune(model, example_inputs=x[:4], ratio=0.5, importance="l2", round_to=8)


def test_prune_halves_every_group_and_reports_it(digits, pruned):
    model, x, *_ = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = pruned.report()
    assert [(g.channels_before, g.channels_after) for g in report.groups] == [
        (32, 16), (64, 32), (64, 32), (10, 10)]
    assert report.groups[-1].blocked_by == ["graph output"]  # the logits stay
    # half the channels of every layer: about a quarter of the parameters and MACs
    assert 0.22 < report.params_after / report.params_before < 0.30
    assert 0.22 < report.macs_after / report.macs_before < 0.30
    # batch 4: conv 8x8 (1 -> 32), conv 8x8 (32 -> 64), conv 4x4 (64 -> 64), linear 256 -> 10
    assert report.macs_before == 4 * (64 * 32 * 9 + 64 * 64 * 32 * 9 + 16 * 64 * 64 * 9
                                      + 256 * 10)
    text = str(report)
    assert "32 -> 16" in text and "out of features.0 -> into features.3" in text
    convs = [n for n in pruned.ir.nodes if n.op == "conv2d"]
    assert [c.inputs[1].type.shape[:2] for c in convs] == [(16, 1), (32, 16), (32, 32)]
    verify(pruned.ir)
    for k, v in model.state_dict().items():  # the user's model is left as it was
        assert torch.equal(v, before[k])


def test_pruned_module_is_eager_trainable_and_compiles(digits, pruned):
    _, x, *_ = digits
    batch = x[:7]  # another batch size than the example's: the batch axis is symbolic
    with torch.no_grad():
        eager = pruned(batch)
    ref = interpret(pruned.ir, batch.numpy())
    np.testing.assert_allclose(eager.numpy(), ref[0] if isinstance(ref, list) else ref,
                               rtol=1e-4, atol=1e-5)
    trainable = [n for n, p in pruned.named_parameters() if p.requires_grad]
    assert any("weight" in n for n in trainable)
    assert not any("running" in n for n in trainable)  # BatchNorm statistics stay frozen
    compiled = rtinfer.compile(pruned, example_inputs=x[:4], backend="torch", cache=False)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x[:4]).numpy(), pruned(x[:4]).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_distill_wins_the_accuracy_back(digits):
    model, x, y, train, test = digits
    student = rtinfer.prune(model, example_inputs=x[:4], ratio=0.5, round_to=8)
    dense, alone = _top1(model, x[test], y[test]), _top1(student, x[test], y[test])
    batches = [(x[train[i:i + 64]],) for i in range(0, len(train), 64)]  # no labels: KD only
    out = rtinfer.distill(student, teacher=model, data=batches, steps=300, loss="logits",
                          temperature=4.0, lr=3e-3, progress=False)
    assert out is student and not model.training
    distilled = _top1(student, x[test], y[test])
    print(f"digits top-1: dense {dense:.2f}, pruned alone {alone:.2f}, distilled {distilled:.2f}")
    assert dense > 97.0
    assert distilled >= dense - 0.5
    # the trained weights go back into the IR
    ir = student.to_ir()
    verify(ir)
    ref = interpret(ir, x[test[:5]].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(ref[0] if isinstance(ref, list) else ref,
                                   student(x[test[:5]]).numpy(), rtol=1e-4, atol=1e-4)


def test_distill_with_labels_and_bad_batches(digits, pruned):
    model, x, y, train, _ = digits
    student = rtinfer.prune(model, example_inputs=x[:4], ratio=0.5)
    batches = [(x[train[:32]], y[train[:32]])]
    rtinfer.distill(student, teacher=model, data=batches, steps=2, alpha=0.7, progress=False)
    with pytest.raises(PruneError, match="batch 1: the student takes 1 input"):
        rtinfer.distill(student, teacher=model, data=[(x[:2], y[:2], y[:2])], steps=1,
                        progress=False)
    with pytest.raises(PruneError, match="data gave no batches"):
        rtinfer.distill(student, teacher=model, data=[], steps=1, progress=False)
    with pytest.raises(PruneError, match="unknown distillation loss 'features'"):
        rtinfer.distill(student, teacher=model, data=batches, loss="features", progress=False)


def test_prune_options(digits):
    model, x, *_ = digits
    small = rtinfer.prune(model, example_inputs=x[:2], target_macs=0.5, round_to=1)
    r = small.report()
    assert r.macs_after <= 0.5 * r.macs_before
    assert r.macs_after > 0.3 * r.macs_before  # the least pruning that meets the target
    kept = rtinfer.prune(model, example_inputs=x[:2], ratio=0.5, ignore=[model.features[0]])
    first = kept.report().groups[0]
    assert first.ignored and first.channels_after == 32
    with pytest.raises(PruneError, match="unknown importance 'fisher'"):
        rtinfer.prune(model, example_inputs=x[:2], importance="fisher")
    with pytest.raises(PruneError, match="ratio must be in"):
        rtinfer.prune(model, example_inputs=x[:2], ratio=1.5)
    with pytest.raises(PruneError, match="neither a layer name nor a submodule"):
        rtinfer.prune(model, example_inputs=x[:2], ignore=[nn.Linear(2, 2)])


def test_taylor_importance_measures_gradients_on_data():
    """Channels whose weights are zero have zero saliency |w * dL/dw|: taylor prunes exactly
    them, and the pruned model computes what the dense one does."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).eval()
    dead = [1, 2, 5, 6]
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[3].weight[:, dead] = 0
    x = torch.randn(16, 2, 5, 5)
    data = [(x[:8], torch.randint(0, 3, (8,))), (x[8:],)]  # labels optional per batch
    pruned = rtinfer.prune(model, example_inputs=x[:2], importance="taylor", data=data,
                           ratio=0.5, round_to=1)
    assert [(g.channels_before, g.channels_after) for g in pruned.report().groups
            if not g.blocked_by] == [(8, 4), (4, 2)]
    conv = next(n for n in pruned.ir.nodes if n.op == "conv2d")
    assert not (conv.inputs[1].const_data == 0).all(axis=(1, 2, 3)).any()  # the dead ones went
    with pytest.raises(PruneError, match="needs data"):
        rtinfer.prune(model, example_inputs=x[:2], importance="taylor")


def test_pruned_model_names_a_bad_input(pruned):
    with pytest.raises(PruneError, match=r"input 0 \(x\): expected f32\[B,1,8,8\]"):
        pruned(torch.zeros(2, 3, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("importance", ["l1", "bn-scale", "taylor"])
def test_every_importance_distills_back_with_labels(digits, importance):
    model, x, y, train, test = digits
    batches = [(x[train[i:i + 64]], y[train[i:i + 64]]) for i in range(0, len(train), 64)]
    student = rtinfer.prune(model, example_inputs=x[:4], ratio=0.5, importance=importance,
                            data=batches if importance == "taylor" else None)
    alone = _top1(student, x[test], y[test])
    rtinfer.distill(student, teacher=model, data=batches, steps=300, lr=3e-3, alpha=0.7,
                    progress=False)
    dense, distilled = _top1(model, x[test], y[test]), _top1(student, x[test], y[test])
    print(f"{importance}: dense {dense:.2f}, pruned alone {alone:.2f}, distilled {distilled:.2f}")
    assert distilled >= dense - 0.5


def test_deepcopy_keeps_the_weights_and_their_ir(digits, pruned):
    import copy

    _, x, *_ = digits
    twin = copy.deepcopy(pruned)
    with torch.no_grad():
        twin.net.fc_weight.mul_(2)  # the copy owns its weights
        assert not torch.equal(twin(x[:3]), pruned(x[:3]))
        ref = interpret(twin.to_ir(), x[:3].numpy())
        np.testing.assert_allclose(ref[0] if isinstance(ref, list) else ref, twin(x[:3]).numpy(),
                                   rtol=1e-4, atol=1e-5)
