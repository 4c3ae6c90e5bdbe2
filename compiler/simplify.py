"""``compile(prune=...)``: prune -> distill -> int8 under one accuracy budget.

    fast = rtinfer.compile(model, example_inputs=x, prune=0.5, precision="int8",
                           calibration=batches, train_data=batches, validation=held_out,
                           accuracy_budget=0.01)
    print(fast.report())          # per step: MACs, parameters, latency, accuracy or fidelity

The budget is measured on ``validation``, held-out batches the user passes, against the dense
model (never on the data the pipeline trains or calibrates on):

- batches with labels (the model's inputs followed by integer class labels, or a dict with
  ``"labels"``): top-1 of the first output (argmax over its last axis); ``accuracy_budget`` is
  the largest drop of top-1 allowed, as a fraction (0.01 = one point);
- a sentence encoder's batches (named inputs with an ``attention_mask``, token states
  ``[N, S, H]`` as the first output; no labels): the embedding error, ``1 - cosine`` of each
  sentence's mean-pooled embedding (the first output averaged over its mask, what a
  sentence-transformers user compares) to the dense model's, averaged over the sentences;
  ``accuracy_budget=0.05`` keeps the mean embedding cosine at least 0.95;
- other batches without labels: the relative output error ``|y - y_dense| / |y_dense|`` (L2
  norms over all outputs of a batch, averaged over the batches; int8's own measure,
  ``rtinfer.int8.output_error``); ``accuracy_budget`` is the largest error allowed. The report
  also gives the mean cosine similarity of the outputs to the dense model's.

The steps, each measured on the validation batches:

1. ``rtinfer.prune`` at the ratio asked, then ``rtinfer.distill`` from the dense model on
   ``train_data`` (``distill_steps`` default: four passes over the data, within 300-1000
   steps; 1500 for a sentence encoder). A classifier (one ``[N, classes]`` output) is
   pruned by weight magnitude (l2) and distilled on its logits; a sentence encoder (named
   inputs with an ``attention_mask``, token states ``[N, S, H]`` first) by activation
   importance on the first
   ``IMPORTANCE_BATCHES`` training batches and ``loss="embedding"``; any other model by
   activation importance and ``loss="hidden"``; ``distill``'s recipe for the loss sets the
   optimizer (``rtinfer.prune.RECIPES``). Pruning may spend ``PRUNE_SHARE`` of the budget
   when int8 follows (the rest is int8's), all of it otherwise; where it spends more, the
   ratio backs off (``BACKOFF`` times the last, up to ``PRUNE_TRIES`` tries; after that the
   model stays dense) and the report says so.
2. int8 (``rtinfer.int8.quantize_for_compile``) of the distilled model's optimized graph, with
   what is left of the budget: in output-error units that is the budget minus the pruned
   model's error (``|q - d| <= |q - s| + |s - d|``); for the embedding error, the angle left
   (angles add up the same way) as int8's output-error budget, a first guess the validation
   data then checks; with labels every faster layer is int8 at first. Where the int8 model
   breaks the budget on the validation data, fewer layers stay int8 (int8's own error budget
   halved, up to ``INT8_TRIES`` tries; after that every layer fp32), and the report says so.
3. The compiled model itself is measured last: its latency and its accuracy on the validation
   data, and whether the budget holds.

The pipeline trains: ``compile`` does not use the compile cache with ``prune=``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rtinfer.backends import dispatch
from rtinfer.backends.torch_backend import build_module
from rtinfer.errors import PruneError
from rtinfer.frontends.torch_frontend import example_args
from rtinfer.int8 import Int8Report, quantize_for_compile
from rtinfer.ir.graph import Graph
from rtinfer.measure import flat_outputs
from rtinfer.passes.pruning.prune_channels import DATA_IMPORTANCE, group_ratios
from rtinfer.prune import LOSSES, RECIPES, distill, prune

PRUNE_SHARE = 0.75  # of the budget pruning may spend when int8 follows
BACKOFF = 0.6  # the next ratio tried, as a fraction of the last, when pruning breaks the budget
PRUNE_TRIES = 3
IMPORTANCE_BATCHES = 4  # training batches activation importance is measured on
INT8_TRIES = 3
LATENCY_SECONDS = 0.3  # timed per model in the report (at least LATENCY_MIN_RUNS calls)
LATENCY_MIN_RUNS = 5

Batch = Any  # a model call's inputs: a tensor, a tuple of tensors or a dict of named tensors
Binder = Callable[[Batch], list[torch.Tensor]]  # a batch -> the compiled graph's input tensors


# -- the report --------------------------------------------------------------------------------


@dataclass
class StepRow:
    """One step of the pipeline as the report shows it."""

    step: str
    macs: int | None
    params: int | None
    latency_ms: float | None
    # top-1 in % (labels), the embedding error (a sentence encoder) or the relative output
    # error to the dense model
    metric: float | None
    # mean cosine similarity to the dense model's outputs (a sentence encoder's: embeddings)
    cosine: float | None
    note: str = ""


@dataclass
class SimplifyReport:
    """What ``compile(prune=...)`` did: each step's cost and gain, and every back-off."""

    metric: str  # "top-1" | "relative error" | "embedding error"
    budget: float | None
    rows: list[StepRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    within_budget: bool | None = None  # of the compiled model; None without a budget

    def table(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return format(x, fmt) if x is not None else "-".rjust(int(fmt.split(".")[0].strip(
                ",d")))

        unit = {"top-1": "top-1 %", "embedding error": "1-emb.cos"}.get(self.metric,
                                                                         "rel. error")
        if self.budget is None:
            budget = "no accuracy budget"
        elif self.metric == "top-1":
            budget = f"budget: top-1 drop at most {100 * self.budget:g} pt"
        elif self.metric == "embedding error":
            budget = f"budget: mean embedding cosine at least {1 - self.budget:g}"
        else:
            budget = f"budget: relative output error at most {self.budget:g}"
        verdict = "" if self.within_budget is None else (
            "; within budget" if self.within_budget else "; OVER BUDGET")
        lines = [f"prune -> distill -> int8 ({budget}{verdict}; measured on the validation "
                 f"data)",
                 f"  {'step':<34} {'MACs':>14} {'params':>12} {'latency ms':>10} "
                 f"{unit:>10} {'cosine':>8}  note"]
        for r in self.rows:
            lines.append(f"  {r.step[:34]:<34} {num(r.macs, '14,d')} {num(r.params, '12,d')} "
                         f"{num(r.latency_ms, '10.3f')} {num(r.metric, '10.4g')} "
                         f"{num(r.cosine, '8.4f')}  {r.note}")
        lines += [f"  back-off: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> SimplifyReport:
        return cls(**{**rec, "rows": [StepRow(**r) for r in rec.get("rows", [])]})


# -- measuring ---------------------------------------------------------------------------------


def _call(model: Callable[..., Any], batch: Batch) -> list[np.ndarray]:
    args, kwargs = example_args(model, batch) if isinstance(model, torch.nn.Module) \
        else ((batch,), {}) if isinstance(batch, torch.Tensor) else \
        ((), dict(batch)) if isinstance(batch, dict) else (tuple(batch), {})
    with torch.inference_mode():
        return flat_outputs(model(*args, **kwargs))


def _latency_ms(fn: Callable[[], Any]) -> float:
    """The median wall time of ``fn`` in ms, over ``LATENCY_SECONDS`` of calls after two
    warm-up calls."""
    with torch.inference_mode():
        fn()
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < LATENCY_MIN_RUNS or time.perf_counter() - start < LATENCY_SECONDS:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


@dataclass
class Validation:
    """The held-out batches (model-call form), their labels (or None) and the dense model's
    outputs on them."""

    inputs: list[Batch]
    labels: list[torch.Tensor] | None
    reference: list[list[np.ndarray]] = field(default_factory=list)
    # a sentence encoder's attention masks, one per batch: the metric is the embedding error
    masks: list[np.ndarray] | None = None

    @property
    def metric(self) -> str:
        if self.labels is not None:
            return "top-1"
        return "relative error" if self.masks is None else "embedding error"

    def score(self, outputs: list[list[np.ndarray]]) -> tuple[float, float]:
        """(top-1 in %, embedding error or relative error; mean cosine to the dense
        outputs, of the embeddings for a sentence encoder)."""
        if self.masks is not None:
            sims = [_cosines(_pooled(ref[0], m), _pooled(got[0], m)) for ref, got, m
                    in zip(self.reference, outputs, self.masks, strict=True)]
            cosine = float(np.mean(np.concatenate(sims)))
            return 1.0 - cosine, cosine
        cosines, errors = [], []
        for ref, got in zip(self.reference, outputs, strict=True):
            if len(ref) != len(got):
                raise PruneError(f"the model returned {len(got)} outputs, the dense model "
                                 f"{len(ref)}")
            a = np.concatenate([np.asarray(r, np.float64).ravel() for r in ref])
            b = np.concatenate([np.asarray(g, np.float64).ravel() for g in got])
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            errors.append(float(np.linalg.norm(a - b) / na) if na > 0 else float(nb))
            cosines.append(1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-300)))
        cosine = float(np.mean(cosines))
        if self.labels is None:
            return float(np.mean(errors)), cosine
        hits = sum(int((np.asarray(out[0]).reshape(len(y), -1).argmax(-1) == y.numpy()).sum())
                   for out, y in zip(outputs, self.labels, strict=True))
        return 100.0 * hits / sum(len(y) for y in self.labels), cosine

    def loss(self, dense: float, value: float) -> float:
        """What a model with ``value`` costs against the dense model's ``dense``, in the
        budget's units (a fraction of top-1, or relative error)."""
        return (dense - value) / 100.0 if self.labels is not None else value


def _pooled(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's mean over its unmasked tokens: ``[N, S, H]`` and ``[N, S]`` -> ``[N, H]``."""
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(states, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (1 where both rows are zero)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(1)
    return np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))


def sentence_encoder(example: Batch, outputs: list[np.ndarray]) -> bool:
    """A model called with named inputs holding an ``attention_mask`` whose first output is
    token states ``[N, S, H]``: its users compare mean-pooled embeddings."""
    return isinstance(example, dict) and "attention_mask" in example and bool(outputs) \
        and outputs[0].ndim == 3


def _split(batch: Any, n_inputs: int | None, where: str) -> tuple[Batch, torch.Tensor | None]:
    """(inputs in model-call form, labels or None): labels follow the inputs of a tuple, or sit
    under ``"labels"`` in a dict; ``n_inputs`` is None for dict examples."""
    if isinstance(batch, dict):
        if not all(isinstance(t, torch.Tensor) for t in batch.values()):
            raise PruneError(f"{where}: a batch dict must hold tensors")
        inputs = {k: t for k, t in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    items = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise PruneError(f"{where}: a batch must be tensors (the model's inputs, then optional "
                         f"labels), got {[type(t).__name__ for t in items]}")
    n = n_inputs or 1
    if len(items) == n:
        return (items[0] if n == 1 else items), None
    if len(items) == n + 1:
        return (items[0] if n == 1 else items[:-1]), items[-1]
    raise PruneError(f"{where}: the model takes {n} input(s); a batch holds them and optionally "
                     f"labels, got {len(items)} tensors")


def _tensors(batch: Batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    return list(batch.values()) if isinstance(batch, dict) else list(batch)


def _slices(batch: Batch, size: int) -> list[Batch]:
    """``batch`` cut along the first axis into batches of ``size`` (the example's batch size:
    the compiled graph's shapes are static), or as is where it is not a multiple of it."""
    ts = _tensors(batch)
    n = ts[0].shape[0] if ts and ts[0].dim() else 0
    if n <= size or n % size or any(t.dim() == 0 or t.shape[0] != n for t in ts):
        return [batch]

    def cut(i: int) -> Batch:
        if isinstance(batch, torch.Tensor):
            return batch[i:i + size]
        if isinstance(batch, dict):
            return {k: t[i:i + size] for k, t in batch.items()}
        return tuple(t[i:i + size] for t in batch)
    return [cut(i) for i in range(0, n, size)]


# -- the plan ----------------------------------------------------------------------------------


def default_steps(n_batches: int, loss: str = "logits") -> int:
    """Four passes over the training batches, within 300-1000 optimizer steps; a sentence
    encoder's ``loss="embedding"`` takes its recipe's (``RECIPES["embedding"].steps``, 1500:
    a pruned all-MiniLM-L6-v2 was still gaining at 1000)."""
    if loss == "embedding":
        return RECIPES[loss].steps
    return min(1000, max(300, 4 * n_batches))


def _check(model: Any, prune_ratio: Any, precision: str, train_data: Any, validation: Any,
           accuracy_budget: Any, distill_steps: Any, distill_loss: str | None) -> None:
    if prune_ratio is None:
        given = [k for k, v in (("train_data", train_data), ("validation", validation),
                                ("distill_steps", distill_steps),
                                ("distill_loss", distill_loss)) if v is not None]
        raise PruneError(f"{', '.join(given)} go(es) with prune= (the prune -> distill -> int8 "
                         f"pipeline); give prune=RATIO, e.g. prune=0.5")
    if not isinstance(model, torch.nn.Module):
        raise PruneError(f"prune= needs a torch nn.Module (the pruned model is distilled from "
                         f"it), got a {type(model).__name__}")
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float, Mapping)):
        raise PruneError(f"prune= is the fraction of channels removed (e.g. 0.5) or a ratio per "
                         f"group kind ({{'ffn': 0.5, 'heads': 0.34}}), got {prune_ratio!r}")
    try:
        group_ratios(prune_ratio)  # a bad ratio fails before any work
    except PruneError as e:
        raise PruneError(f"prune={prune_ratio!r}: {e}") from None
    if train_data is None:
        raise PruneError("prune= needs train_data=batches: the pruned model gets its accuracy "
                         "back by distillation from the dense model on them")
    if accuracy_budget is not None:
        if isinstance(accuracy_budget, bool) or not isinstance(accuracy_budget, (int, float)) \
                or not 0 < accuracy_budget < math.inf:
            raise PruneError(f"accuracy_budget must be a positive number (top-1 drop as a "
                             f"fraction with labelled validation data, 1 - embedding cosine "
                             f"for a sentence encoder, else relative output error), got "
                             f"{accuracy_budget!r}")
        if validation is None:
            raise PruneError("accuracy_budget with prune= is measured on held-out data: give "
                             "validation=batches (inputs, then optional labels)")
    if distill_steps is not None and (not isinstance(distill_steps, int) or distill_steps < 1):
        raise PruneError(f"distill_steps must be a positive int, got {distill_steps!r}")
    if distill_loss is not None and distill_loss not in LOSSES:
        raise PruneError(f"distill_loss={distill_loss!r}: choose one of {', '.join(LOSSES)}")
    if precision not in ("fp32", "int8"):
        raise PruneError(f"prune= compiles to precision 'fp32' or 'int8', not {precision!r}")


def _scaled(ratio: float | Mapping[str, float], factor: float) -> float | dict[str, float]:
    if isinstance(ratio, Mapping):
        return {k: float(r) * factor for k, r in ratio.items()}
    return float(ratio) * factor


def _ratio_text(ratio: float | Mapping[str, float]) -> str:
    if isinstance(ratio, Mapping):
        return ", ".join(f"{k} {r:.2g}" for k, r in ratio.items())
    return f"{ratio:.2g}"


class Plan:
    """The pipeline's state between ``compile``'s stages: ``prepare`` pruned and distilled
    (``student``); ``quantize`` is the int8 stage; ``finish`` measures the compiled model."""

    def __init__(self, model: torch.nn.Module, example: Any, validation: Validation | None,
                 budget: float | None, precision: str, backend: str):
        self.model, self.example, self.validation = model, example, validation
        self.budget, self.precision = budget, precision
        # where the latencies of the intermediate models are measured ("auto" picks at build)
        self.backend = "native" if backend == "auto" else backend
        self.student: torch.nn.Module = model
        self.report = SimplifyReport(validation.metric if validation else "top-1", budget)
        self.dense_score: float | None = None
        self.spent = 0.0  # the budget the compiled fp32 student spends

    def _score(self, outputs: Callable[[Batch], list[np.ndarray]]
               ) -> tuple[float | None, float | None]:
        """(metric, cosine) of ``outputs`` on the validation data, run in slices of the
        example's batch size; (None, None) without validation data."""
        if self.validation is None:
            return None, None
        size = self._example_size()

        def run(batch: Batch) -> list[np.ndarray]:
            parts = [outputs(b) for b in _slices(batch, size)]
            if len(parts) == 1:
                return parts[0]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return self.validation.score([run(b) for b in self.validation.inputs])

    def _loss(self, score: float | None) -> float:
        if self.validation is None or score is None or self.dense_score is None:
            return 0.0
        return self.validation.loss(self.dense_score, score)

    @staticmethod
    def _graph_outputs(graph: Graph, bind: Binder) -> Callable[[Batch], list[np.ndarray]]:
        """``graph`` on the torch backend (int8 as fake-quant: the oracle's numbers)."""
        module = build_module(graph)

        def run(batch: Batch) -> list[np.ndarray]:
            with torch.inference_mode():
                return flat_outputs(module(*bind(batch)))
        return run

    def _example_size(self) -> int:
        ts = _tensors(self.example) if not isinstance(self.example, tuple) or not (
            len(self.example) == 2 and isinstance(self.example[1], dict)) else []
        return int(ts[0].shape[0]) if ts and ts[0].dim() else 1

    def quantize(self, graph: Graph, batches: list[list[torch.Tensor]], bind: Binder
                 ) -> tuple[Graph, Int8Report]:
        """The int8 stage on the distilled model's optimized ``graph``: int8 within what is
        left of the budget, fewer int8 layers where the validation data says it breaks."""
        example = bind(self.example)
        fp32 = dispatch.build(self.backend, graph, target="cpu", trainable=False, mkldnn=None,
                              strict=False)
        ms = _latency_ms(lambda: fp32(*example))
        last = self.report.rows[-1]
        if last.latency_ms is None:  # the distilled model's row
            last.latency_ms, last.note = ms, f"{last.note}; latency: rtinfer {self.backend} fp32"
        else:  # the model stayed dense
            self.report.rows.append(StepRow(f"rtinfer {self.backend} fp32", last.macs,
                                            last.params, ms, last.metric, last.cosine))
        if self.validation is not None and self.validation.masks is not None \
                and self.budget is not None:
            # angles between embeddings add up (triangle inequality on the sphere); the angle
            # left, as a relative error of the outputs, is int8's first budget: the error of
            # a mean-pooled embedding is about its tokens' (the validation data checks)
            left = math.acos(max(-1.0, 1.0 - self.budget)) \
                - math.acos(max(-1.0, 1.0 - self.spent))
            int8_budget: float | None = max(left, 1e-6)
        elif self.validation is not None and self.validation.labels is None \
                and self.budget is not None:
            int8_budget = max(self.budget - self.spent, 1e-6)
        else:
            int8_budget = None  # every faster layer int8 first; the labels judge
        for attempt in range(INT8_TRIES):
            qgraph, report = quantize_for_compile(graph, batches, int8_budget,
                                                  backend=self.backend)
            score, cosine = self._score(self._graph_outputs(qgraph, bind))
            loss = self._loss(score)
            if self.budget is None or loss <= self.budget or report.int8_layers == 0:
                break
            what = f"int8 with {report.int8_layers} of {len(report.layers)} layers: " \
                f"{self._loss_text(loss)} > budget {self.budget:g}"
            if attempt == INT8_TRIES - 1:
                self.report.notes.append(f"{what}; every layer back to fp32")
                for r in report.layers:
                    if r.precision == "int8":
                        r.precision, r.why = "fp32", "over the pipeline's accuracy budget"
                report.error = 0.0
                qgraph, score, cosine = graph, self.report.rows[-1].metric, \
                    self.report.rows[-1].cosine
                break
            int8_budget = max(report.error, 1e-6) / 2
            self.report.notes.append(f"{what}; int8's output-error budget -> "
                                     f"{int8_budget:.3g}")
        qmod = dispatch.build(self.backend, qgraph, target="cpu", trainable=False,
                              mkldnn=None, strict=False)
        row = self.report.rows[-1]
        self.report.rows.append(StepRow(
            f"int8 ({report.int8_layers} of {len(report.layers)} layers)", row.macs,
            row.params, _latency_ms(lambda: qmod(*example)), score, cosine,
            f"{report.method.split(' ')[0]} calibration on {report.batches} batches; "
            f"latency: rtinfer {self.backend}"))
        return qgraph, report

    def _loss_text(self, loss: float) -> str:
        if self.validation is not None and self.validation.labels is not None:
            return f"top-1 {100 * loss:.2f} points below dense"
        if self.validation is not None and self.validation.masks is not None:
            return f"embedding error (1 - cosine) {loss:.3g}"
        return f"relative error {loss:.3g}"

    def finish(self, compiled: Callable[..., Any], backend: str) -> dict[str, Any]:
        """The compiled model's row (latency on the example, score on the validation data),
        whether the budget holds, and the report's record."""
        example = self.example
        latency = _latency_ms(lambda: _call(compiled, example))
        score, cosine = self._score(lambda b: _call(compiled, b))
        last = self.report.rows[-1]
        self.report.rows.append(StepRow(f"compiled ({backend})", last.macs, last.params,
                                        latency, score, cosine, "what rtinfer.compile returns"))
        if self.budget is not None and score is not None:
            self.report.within_budget = self._loss(score) <= self.budget + 1e-9
        return self.report.to_record()


def prepare(model: Any, example_inputs: Any, prune_ratio: Any, *, precision: str,
            train_data: Any, validation: Any, accuracy_budget: float | None,
            distill_steps: int | None, distill_loss: str | None, backend: str,
            importance: str | None = None, round_to: int = 8, progress: bool = True) -> Plan:
    """Prune and distill ``model`` within its share of the budget (backing off the ratio where
    it breaks it); the plan whose ``student`` ``compile`` goes on with. ``importance`` None:
    l2 for a classifier, activation on the training data otherwise."""
    _check(model, prune_ratio, precision, train_data, validation, accuracy_budget,
           distill_steps, distill_loss)
    if example_inputs is None:
        raise PruneError("prune= needs example_inputs (a tensor, a tuple of tensors or a dict "
                         "of named tensors)")
    n_inputs = None if isinstance(example_inputs, dict) else len(
        example_inputs) if isinstance(example_inputs, tuple) else 1
    train = list(train_data)
    if not train:
        raise PruneError("train_data gave no batches")
    valid = None
    if validation is not None:
        pairs = [_split(b, n_inputs, f"validation batch {i}") for i, b in enumerate(validation)]
        if not pairs:
            raise PruneError("validation gave no batches")
        labels = [y for _, y in pairs]
        if any(y is not None for y in labels) and any(y is None for y in labels):
            raise PruneError("validation: give labels with every batch or with none")
        valid = Validation([x for x, _ in pairs], None if labels[0] is None else labels)
        if valid.labels is None and all(isinstance(x, dict) and "attention_mask" in x
                                        for x in valid.inputs) \
                and sentence_encoder(example_inputs, _call(model, example_inputs)):
            valid.masks = [x["attention_mask"].numpy() for x in valid.inputs]
    plan = Plan(model, example_inputs, valid, accuracy_budget, precision, backend)
    was_training = model.training
    model.eval()
    try:
        _prune_and_distill(plan, prune_ratio, train, distill_steps, distill_loss, importance,
                           round_to, progress)
    finally:
        model.train(was_training)
    return plan


def default_loss(model: Any, example: Batch) -> str:
    """The distillation loss for ``model``: "logits" where it returns one ``[N, classes]``
    tensor, "embedding" for a sentence encoder (named inputs with an ``attention_mask``, token
    states ``[N, S, H]`` as its first output: its users compare mean-pooled embeddings),
    "hidden" otherwise."""
    out = _call(model, example)
    if len(out) == 1 and out[0].ndim == 2:
        return "logits"
    if sentence_encoder(example, out):
        return "embedding"
    return "hidden"


def _prune_and_distill(plan: Plan, ratio: Any, train: list, steps: int | None,
                       loss: str | None, importance: str | None, round_to: int,
                       progress: bool) -> None:
    model, example, report = plan.model, plan.example, plan.report
    if plan.validation is not None:
        plan.validation.reference = [_call(model, b) for b in plan.validation.inputs]
    plan.dense_score, _ = plan._score(lambda b: _call(model, b))
    if loss is None:
        loss = default_loss(model, example)
    if importance is None:  # magnitude serves a CNN; an encoder's weights say little of its text
        importance = "l2" if loss == "logits" else "activation"
    data = train[:IMPORTANCE_BATCHES] if importance in DATA_IMPORTANCE else None
    steps = steps or default_steps(len(train), loss)
    share = plan.budget if plan.budget is None or plan.precision == "fp32" \
        else plan.budget * PRUNE_SHARE
    dense_ms = _latency_ms(lambda: _call(model, example))
    dense_row = StepRow("dense (eager fp32)", None, None, dense_ms, plan.dense_score,
                        None if plan.validation is None else 1.0, "the model as given")
    for attempt in range(PRUNE_TRIES):
        r = _scaled(ratio, BACKOFF ** attempt)
        pruned = prune(model, example_inputs=example, ratio=r, importance=importance,
                       round_to=round_to, data=data)
        pr = pruned.report()
        alone = plan._score(lambda b, p=pruned: _call(p, b))
        student = distill(pruned, teacher=model, data=train, steps=steps, loss=loss,
                          progress=progress)
        score, cosine = plan._score(lambda b, s=student: _call(s, b))
        spent = plan._loss(score)
        if share is None or spent <= share:
            dense_row.macs, dense_row.params = pr.macs_before, pr.params_before
            report.rows = [dense_row,
                           StepRow(f"prune {_ratio_text(r)} ({importance})", pr.macs_after,
                                   pr.params_after, None, alone[0], alone[1],
                                   "before distillation"),
                           StepRow(f"distill {steps} steps ({loss})", pr.macs_after,
                                   pr.params_after, None, score, cosine,
                                   f"{len(train)} training batches")]
            plan.student, plan.spent = student, spent
            return
        report.notes.append(f"prune {_ratio_text(r)} + distill: {plan._loss_text(spent)} > "
                            f"{'budget' if share == plan.budget else 'its share'} {share:.3g}"
                            + ("; ratio backed off" if attempt < PRUNE_TRIES - 1 else
                               "; the model stays dense"))
    report.rows = [dense_row]
    dense_row.note += "; not pruned (every ratio tried broke the budget)"


def simplify_lines(record: dict[str, Any]) -> list[str]:
    """The report's lines for ``CompiledModel.report()``."""
    return SimplifyReport.from_record(record).table().splitlines()


__all__ = ["BACKOFF", "IMPORTANCE_BATCHES", "INT8_TRIES", "PRUNE_SHARE", "PRUNE_TRIES", "Plan",
           "SimplifyReport", "StepRow", "default_loss", "default_steps", "prepare",
           "sentence_encoder", "simplify_lines"]
