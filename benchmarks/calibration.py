"""Calibration and held-out evaluation data of the int8 systems: real inputs, fixed and offline.

Every workload gets ``CALIBRATION_SIZE`` (128) calibration inputs, the set every int8 system
quantizes with, and a separate held-out set on which the int8 outputs are compared with fp32
eager's (``int8.accuracy``). Both are deterministic: the same inputs on every run and machine
(MiniLM's sentences: for one Python version, whose docstrings they are).

- ResNet-18, MobileNetV2: crops of the two photographs scikit-learn ships
  (``sklearn.datasets.load_sample_images``: a temple in China and a flower, 427x640 each) at
  seeded positions, sizes and flips, resized to 224x224 and normalized with ImageNet's mean and
  standard deviation: natural-image statistics, where Gaussian noise would calibrate a range
  no real input has. The two sets are different crops, but of the same two photographs.
- all-MiniLM-L6-v2: real English sentences, the first sentence of the docstrings of standard
  library modules and their public classes and functions (``SENTENCE_MODULES``), tokenized
  with the model's own tokenizer and padded or truncated to the workload's sequence length;
  calibration and held-out sentences alternate through the list, so both span every module.
- the MLP: seeded standard-normal inputs (it has no natural data).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

CALIBRATION_SIZE = 128  # the "128 calibration inputs", for every int8 system alike
HELDOUT_IMAGES = 32
HELDOUT_SENTENCES = 100
HELDOUT_MLP = 64
# ImageNet's per-channel mean and standard deviation (torchvision's normalization)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the standard library modules whose docstrings give MiniLM's sentences, in this order
SENTENCE_MODULES = (
    "json", "os", "collections", "itertools", "functools", "re", "string", "textwrap",
    "pathlib", "datetime", "random", "statistics", "fractions", "decimal", "heapq", "bisect",
    "shutil", "tempfile", "glob", "fnmatch", "csv", "configparser", "logging", "argparse",
    "subprocess", "threading", "queue", "socket", "email", "http.client", "urllib.parse",
    "zipfile", "tarfile", "gzip", "hashlib", "base64", "pickle", "copy", "pprint", "inspect",
    "typing", "dataclasses", "enum", "contextlib", "abc", "io", "time", "calendar", "difflib",
    "unittest", "doctest", "timeit", "traceback", "warnings")
# markup and code in a sentence: not the prose a sentence-embedding model is meant for
_CODE = re.compile(r"[<>{}\[\]=()|\\`]|__")


class DataUnavailable(Exception):
    """The data set cannot be built here (the message says what to install)."""


@dataclass(frozen=True)
class DataSet:
    """A workload's int8 data: input tuples shaped like its example inputs."""

    calibration: list[tuple[torch.Tensor, ...]]
    heldout: list[tuple[torch.Tensor, ...]]
    source: str  # what the inputs are, for the report
    # "classify": the output is a vector of logits per input; "embed": the output is token
    # states [1, seq, d], mean-pooled over the attention mask (input 1) into a sentence vector
    task: str
    digest: str  # sha256 of every input, so two runs can tell they used the same data


def _digest(*sets: list[tuple[torch.Tensor, ...]]) -> str:
    h = hashlib.sha256()
    for s in sets:
        for inputs in s:
            for x in inputs:
                h.update(x.numpy().tobytes())
    return h.hexdigest()[:16]


# -- images -----------------------------------------------------------------------------------


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two sample photographs, [427, 640, 3] uint8 each."""
    try:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)
    except ImportError as e:  # scikit-learn itself, or Pillow, which it reads JPEGs with
        raise DataUnavailable(f"the calibration photos need scikit-learn and Pillow ({e}); "
                              f"pip install -e '.[bench]'") from None


def image_crops(n: int, seed: int, size: int = 224) -> list[torch.Tensor]:
    """``n`` seeded crops of the sample photos, each [1, 3, size, size], normalized."""
    # np.array: a writable copy (scikit-learn's arrays are read-only, torch warns about them)
    photos = [torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255.0
              for p in sample_photos()]
    rng = np.random.default_rng(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for _ in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[1:]
        # a square crop of 40-100% of the short side, as Inception-style augmentation takes
        side = int(rng.integers(int(0.4 * min(h, w)), min(h, w) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[None, :, top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                               align_corners=False, antialias=True)
        out.append(((crop - mean) / std).contiguous())
    return out


# -- sentences --------------------------------------------------------------------------------


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s", para)[0]


def stdlib_sentences() -> list[str]:
    """English sentences, in a fixed order: the first sentence of the docstring of each module
    of ``SENTENCE_MODULES`` and of its public classes and functions (sorted by name), 6 to 40
    words of plain prose, each once."""
    seen: set[str] = set()
    out = []
    for name in SENTENCE_MODULES:
        module = importlib.import_module(name)
        members = [getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_")]
        for obj in [module, *members]:
            if obj is not module and not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if obj is not module and getattr(obj, "__module__", None) != module.__name__:
                continue  # re-exported from elsewhere: its own module lists it
            with warnings.catch_warnings():  # typing.io and typing.re warn when read
                warnings.simplefilter("ignore", DeprecationWarning)
                s = _first_sentence(inspect.getdoc(obj) or "")
            if (6 <= len(s.split()) <= 40 and s.isascii() and s[:1].isupper()
                    and s.endswith(".") and not _CODE.search(s) and s not in seen):
                seen.add(s)
                out.append(s)
    return out


def sentence_split(n_calibration: int = CALIBRATION_SIZE,
                   n_heldout: int = HELDOUT_SENTENCES) -> tuple[list[str], list[str]]:
    """Calibration and held-out sentences, alternating through ``stdlib_sentences``."""
    sentences = stdlib_sentences()
    calibration, heldout = sentences[0::2][:n_calibration], sentences[1::2][:n_heldout]
    if len(calibration) < n_calibration or len(heldout) < n_heldout:
        raise DataUnavailable(f"the standard library gave {len(sentences)} sentences; "
                              f"{n_calibration} + {n_heldout} are needed")
    return calibration, heldout


def tokenized(texts: list[str], seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each text as (input_ids [1, seq], attention_mask [1, seq]) by MiniLM's tokenizer."""
    from rtinfer import models

    enc = models.minilm_inputs(texts, seq=seq)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return [(ids[i:i + 1].clone(), mask[i:i + 1].clone()) for i in range(len(texts))]


# -- per workload -----------------------------------------------------------------------------


def dataset(name: str, example_inputs: tuple[torch.Tensor, ...]) -> DataSet:
    """The calibration and held-out inputs of workload ``name`` (its example inputs give the
    shapes: the image size, MiniLM's sequence length, the MLP's width)."""
    if name in ("resnet18", "mobilenet_v2"):
        size = example_inputs[0].shape[-1]
        cal = [(x,) for x in image_crops(CALIBRATION_SIZE, seed=0, size=size)]
        held = [(x,) for x in image_crops(HELDOUT_IMAGES, seed=1, size=size)]
        source = (f"crops of scikit-learn's two sample photos, {size}x{size}, ImageNet "
                  f"normalization: {len(cal)} calibration, {len(held)} held-out (other crops)")
        return DataSet(cal, held, source, "classify", _digest(cal, held))
    if name in ("minilm", "minilm_full"):
        seq = example_inputs[0].shape[-1]
        cal_text, held_text = sentence_split()
        cal, held = tokenized(cal_text, seq), tokenized(held_text, seq)
        source = (f"first sentences of standard-library docstrings, {seq} tokens: "
                  f"{len(cal)} calibration, {len(held)} held-out sentences")
        return DataSet(cal, held, source, "embed", _digest(cal, held))
    if name == "mlp":
        width = example_inputs[0].shape[-1]
        g = torch.Generator().manual_seed(1)
        cal = [(torch.randn(1, width, generator=g),) for _ in range(CALIBRATION_SIZE)]
        held = [(torch.randn(1, width, generator=g),) for _ in range(HELDOUT_MLP)]
        source = (f"seeded standard-normal inputs: {len(cal)} calibration, {len(held)} "
                  f"held-out")
        return DataSet(cal, held, source, "classify", _digest(cal, held))
    raise ValueError(f"no int8 data set for workload {name!r}")
