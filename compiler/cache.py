"""The compile cache: ``rtinfer.compile`` skips the optimization pipeline for a model it has
compiled before.

An entry is keyed by the sha256 of

- the captured IR's content: its text form, in which every constant larger than 16 elements is
  its digest (``tensor_digest``, cached per read-only array, so a second hash is cheap),
- the target and the backend,
- the pipeline: for each pass, its name, options (defaults filled), version, the function that
  implements it and a hash of the file defining it (so editing a custom pass misses too),
- the digest of any data the pipeline's passes read (calibration data, say: ``data_digest``;
  empty when they read none, which leaves the key as it was before data could be read),
- the rtinfer, torch, TVM and numpy versions, and this cache's format version.

An entry is a saved artifact (``rtinfer.artifact``: ``graph.ir``, ``weights.npz``,
``manifest.json`` with checksums) of the optimized IR, plus what the pipeline reported
(``compile_info`` in the manifest, with the backend ``backend="auto"`` chose: the key holds
``"auto"``, not the outcome). A hit skips the pipeline and reloads the optimized IR. A corrupted
or unreadable entry is a warning and a miss, never a wrong answer.

Capture (``torch.export``) is most of a warm compile, so a second key is computed before it: the
model's fingerprint (``model_fingerprint``: the code of its classes, every attribute of every
submodule, parameters and buffers byte for byte, the example inputs' structure, dtypes and
shapes; an ONNX model's bytes) with the same settings. A fingerprint entry,
``models/<key>.json``, names the capture-keyed entry and holds the eager model's input/output
structure, so a warm compile loads both and never captures. Whatever the fingerprint cannot
vouch for makes it give up, and the compile keys on the captured IR as before.

``CompileCache`` is one compile's view of the cache (both keys, lookup and store); ``NoCache``
is the same interface doing nothing (``compile(cache=False)``). ``open_cache`` gives the one
that ``compile(cache=...)`` asks for: the cache lives in ``$RTINFER_CACHE_DIR``, else
``~/.cache/rtinfer`` (``rtinfer.paths.compile_cache_dir``); ``cache="dir"`` puts it elsewhere.
A folder the cache creates is owner-only (``rtinfer.paths.private_dir``); temporaries are named
``.tmp-<key>-<host>-<pid>-<random>``, and those of a writer that was killed are removed by the
next process that stores into the cache.

An ``.onnx`` file's external data is checked (``rtinfer.frontends.external_data``: inside the
model's folder, regular files, ranges inside them) before the fingerprint reads a byte of it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import json
import linecache
import os
import shutil
import sys
import types
import warnings
from dataclasses import dataclass
from functools import cache as _memo
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtinfer.artifact import dump_torch_meta, load_torch_meta, read_artifact, write_artifact
from rtinfer.errors import ArtifactError, CacheDirError
from rtinfer.ir.graph import Graph
from rtinfer.paths import (
    CACHE_ENV,
    TAG_RE,
    compile_cache_dir,
    private_dir,
    remove_stale_temps,
    temp_tag,
)

CACHE_FORMAT_VERSION = 1


def graph_digest(graph: Graph) -> str:
    """sha256 of the graph's text form (large constants stand as their digests)."""
    from rtinfer.ir.printer import print_graph

    return hashlib.sha256(print_graph(graph).encode()).hexdigest()


def versions() -> dict[str, str | None]:
    from rtinfer.kernels.isa import cpu_key
    from rtinfer.version import __version__

    # the CPU level: generated code, and backend="auto"'s remembered choice, belong to it
    return {"rtinfer": __version__, "torch": torch.__version__, "tvm": _tvm_version(),
            "numpy": np.__version__, "cache_format": str(CACHE_FORMAT_VERSION),
            "cpu": cpu_key()}


@_memo
def _tvm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("apache-tvm", "tvm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def pipeline_fingerprint(pipeline: str) -> list[dict[str, Any]]:
    """Each pass of ``pipeline`` as the cache key sees it."""
    from rtinfer.pass_manager.pipeline import parse_pipeline

    out = []
    for inv in parse_pipeline(pipeline):
        p = inv.pass_
        out.append({"pass": p.name, "version": p.version, "source": p.source,
                    "code": _source_hash(p.fn),
                    "options": {k: p.options[k].format(v) for k, v in sorted(inv.options.items())}})
    return out


def _source_hash(fn: Any) -> str:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    if path is None:
        return ""
    return _file_hash(path, os.path.getmtime(path) if os.path.exists(path) else 0.0)


@_memo
def _file_hash(path: str, mtime: float) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def _settings_key(fields: dict[str, Any], target: str, pipeline: str, backend: str,
                  data_digest: str) -> str:
    fields.update(target=target, backend=backend, pipeline=pipeline_fingerprint(pipeline),
                  versions=versions())
    if data_digest:  # absent when no pass reads data: the keys of such compiles do not change
        fields["data"] = data_digest
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def cache_key(graph: Graph, target: str, pipeline: str, backend: str,
              data_digest: str = "") -> str:
    """The cache key of compiling ``graph`` (the captured IR) with these settings;
    ``data_digest``: the digest of the data the pipeline's passes read ("" for none)."""
    return _settings_key({"graph": graph_digest(graph)}, target, pipeline, backend, data_digest)


def lookup(root: Path, key: str) -> tuple[Graph, dict[str, Any]] | None:
    """The optimized graph and the stored compile info of entry ``key``, or None (a miss)."""
    entry = root / key
    if not (entry / "manifest.json").is_file():
        return None
    try:
        graph, manifest = read_artifact(entry, check_digests=False)
        stored = manifest.get("compile_info")
        if not isinstance(stored, dict) or manifest.get("cache_key") != key:
            raise ArtifactError(f"{entry} is not a compile-cache entry for this key")
    except ArtifactError as e:
        warnings.warn(f"rtinfer compile cache: ignoring and removing a bad entry ({e})",
                      stacklevel=4)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return graph, stored


def store(root: Path, key: str, graph: Graph, input_names: list[str], options: dict[str, Any],
          record: dict[str, Any]) -> bool:
    """Write entry ``key`` atomically (a temporary directory renamed into place), so that
    concurrent compiles never see half an entry. ``options``: the compile options the artifact
    records; ``record``: what the compile reported (``compile_info``). False when it could not
    be written."""
    tmp = root / f".tmp-{key[:16]}-{temp_tag()}"
    try:
        _prepare(root)
        write_artifact(tmp, graph, input_names, options,
                       extra={"cache_key": key, "compile_info": record}, atomic=False)
        try:
            os.replace(tmp, root / key)
        except OSError:  # another process stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except (OSError, CacheDirError, ArtifactError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"rtinfer compile cache: cannot write to {root} ({e})", stacklevel=4)
        return False


_TIDIED: set[str] = set()  # the cache folders whose stale temporaries this process removed
_TEMP_RE = rf"\.tmp-[0-9a-f]{{16}}-{TAG_RE}(\.json)?"


def _prepare(folder: Path) -> None:
    """Create ``folder`` owner-only if missing and, once per process, remove the temporaries
    of writers that were killed there."""
    private_dir(folder, "compile cache", CACHE_ENV)
    if str(folder) not in _TIDIED:
        _TIDIED.add(str(folder))
        remove_stale_temps(folder, _TEMP_RE)


# -- the model fingerprint: a key computed before capture --------------------------------------
#
# What capturing a module reads: the code of every class it is made of (the file defining it,
# its package's version, the bytecode actually running), every attribute of every submodule
# (parameters and buffers byte for byte), the example inputs' structure, dtypes and shapes,
# ``dynamic_dims``, the default dtype and the sources of rtinfer's frontends. Whatever the hasher
# cannot vouch for (an object without a ``__dict__``, a class without source, a tensor subclass)
# makes it give up.


class _Doubt(Exception):
    """The fingerprint cannot vouch for something in the model."""


# nn.Module bookkeeping that does not change what forward computes (under no_grad)
_MODULE_SKIP = frozenset({"_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook",
                          "_state_dict_hooks", "_state_dict_pre_hooks",
                          "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                          "_non_persistent_buffers_set"})
# a GraphModule's code is its ``code``; these are the graph, caches and hooks behind it
_FX_SKIP = frozenset({"_graph", "_lineno_map", "_prologue_start", "_tracer_cls",
                      "_tracer_extras", "meta", "shape_env", "_replace_hooks",
                      "_create_node_hooks", "_erase_node_hooks", "_deepcopy_hooks"})
# class attributes with no bearing on behaviour (or that hold C-level state)
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__",
                         "__annotations__", "__slotnames__", "__parameters__", "__orig_bases__",
                         "__abstractmethods__", "_abc_impl", "__firstlineno__",
                         "__static_attributes__", "__match_args__", "__dataclass_fields__",
                         "__dataclass_params__", "__hash__"})
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes, range, slice, type(...))
_TORCH_ATOMS = (torch.dtype, torch.device, torch.layout, torch.memory_format, torch.Size)
_MAX_DEPTH = 64


class _Hasher:
    """Feeds a canonical encoding of Python objects into one hash; ``_Doubt`` where it cannot
    give one. Objects met twice (tied weights, a config shared by every layer) are encoded
    once and then referred to by their visiting order."""

    def __init__(self, tensor_values: bool = True, lenient: bool = False):
        self.h = hashlib.sha256()
        self.tensor_values = tensor_values
        # code's own state (a decorator's closure, class attributes): what cannot be hashed
        # stands as its type; the source and bytecode already pin the behaviour
        self.lenient = lenient
        self.seen: dict[int, int] = {}
        self.alive: list[Any] = []  # what ``seen`` refers to stays alive: ids stay unique
        self.depth = 0

    def put(self, *parts: Any) -> None:
        for p in parts:
            self.h.update(f"{p}\x1f".encode())

    def value(self, x: Any) -> None:
        if type(x) in _PRIMITIVES or isinstance(x, (*_TORCH_ATOMS, np.generic, np.dtype)):
            self.put(type(x).__name__, repr(x))
            return
        if isinstance(x, enum.Enum):
            self.put("enum", _qualname(type(x)), x.name)
            return
        if isinstance(x, (types.FunctionType, types.MethodType, type)) or \
                _is_builtin_function(x):
            self.put("code", _code_digest(x))
            owner = getattr(x, "__self__", None)  # a bound method: its object's state too
            if not isinstance(x, type) and not isinstance(owner, (types.ModuleType, type)) \
                    and owner is not None:
                self.value(owner)
            return
        ref = self.seen.get(id(x))
        if ref is not None:
            self.put("ref", ref)
            return
        self.seen[id(x)] = len(self.seen)
        self.alive.append(x)
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Doubt("too deeply nested")
        try:
            self._compound(x)
        except _Doubt:
            if not self.lenient:
                raise
            self.put("opaque", _qualname(type(x)))
        finally:
            self.depth -= 1

    def _compound(self, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            self.tensor(x)
        elif isinstance(x, np.ndarray):
            self.array(x)
        elif type(x) in (tuple, list) or (isinstance(x, tuple) and hasattr(x, "_fields")):
            self.put(_qualname(type(x)), len(x))
            for v in x:
                self.value(v)
        elif isinstance(x, dict) and type(x).__module__ in ("builtins", "collections"):
            self.put(_qualname(type(x)), len(x))
            self.value(getattr(x, "default_factory", None))
            self.items(x)
        elif type(x) in (set, frozenset):
            subs = []
            for v in x:
                sub = _Hasher(self.tensor_values, self.lenient)
                sub.value(v)
                subs.append(sub.h.hexdigest())
            self.put(type(x).__name__, *sorted(subs))
        elif isinstance(x, functools.cached_property):
            self.value(x.func)
        elif isinstance(x, functools.partial):
            self.put("partial")
            self.value(x.func)
            self.value(x.args)
            self.value(x.keywords)
        elif isinstance(x, torch.nn.Module):
            self.module(x)
        else:
            self.obj(x)

    def items(self, d: dict) -> None:
        for k, v in d.items():
            self.value(k)
            self.value(v)

    def tensor(self, t: torch.Tensor) -> None:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided \
                or t.is_quantized or t.device.type not in ("cpu", "cuda"):
            raise _Doubt(f"a {type(t).__name__} ({t.layout}, {t.device})")
        self.put("tensor", t.dtype, tuple(t.shape), t.device.type, t.requires_grad)
        if self.tensor_values:
            flat = t.detach().contiguous().cpu().reshape(-1)
            self.h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")

    def array(self, a: np.ndarray) -> None:
        if a.dtype.hasobject:
            raise _Doubt("an object array")
        self.put("ndarray", a.dtype.str, a.shape)
        if self.tensor_values:
            self.h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1))

    def module(self, m: torch.nn.Module) -> None:
        skip = _MODULE_SKIP
        if isinstance(m, torch.fx.GraphModule):
            self.put("fx-code", m.code)
            skip = skip | _FX_SKIP | {"_code"}
        self.obj(m, skip)

    def obj(self, x: Any, skip: frozenset[str] = frozenset()) -> None:
        """An instance of a user class: the class's code, then its attributes."""
        cls = type(x)
        if cls.__module__ == "builtins":
            raise _Doubt(f"a {cls.__name__}")
        self.put("obj", _code_digest(cls))
        state = getattr(x, "__dict__", None)
        slots = [s for k in cls.__mro__ for s in vars(k).get("__slots__", ())
                 if s not in ("__dict__", "__weakref__")]
        if state is None and not slots:
            raise _Doubt(f"a {_qualname(cls)} without a __dict__")
        for k, v in (state or {}).items():
            if k not in skip:
                self.put(k)
                self.value(v)
        for s in slots:
            self.put(s)
            self.value(getattr(x, s, _MISSING))
        # a subclass of a builtin: its value too (a str subclass's text is not in __dict__)
        for base in (int, float, complex, str, bytes):
            if isinstance(x, base):
                self.put("value", base.__repr__(x))
        # a container subclass (transformers' ModelOutput is an OrderedDict): its items too
        if isinstance(x, dict):
            self.put("items", len(x))
            self.items(x)
        elif isinstance(x, (list, tuple)):
            self.put("elements", len(x))
            for v in x:
                self.value(v)
        elif isinstance(x, (set, frozenset)):
            raise _Doubt(f"a {_qualname(cls)}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_builtin_function(x: Any) -> bool:
    return isinstance(x, (types.BuiltinFunctionType, types.BuiltinMethodType,
                          types.MethodWrapperType, types.WrapperDescriptorType,
                          types.MethodDescriptorType, types.ClassMethodDescriptorType))


_ACTIVE: set[int] = set()  # functions and classes being digested (a method's __class__ cell)


def _code_digest(x: Any) -> str:
    """What a function, method or class runs. Functions: their bytecode, constants, names,
    defaults and closure. Classes: see ``_class_digest``."""
    if isinstance(x, types.MethodType):
        return "method:" + _code_digest(x.__func__)
    if _is_builtin_function(x):
        owner = getattr(x, "__self__", None)
        owner = owner if isinstance(owner, types.ModuleType) or owner is None else type(owner)
        return f"builtin:{getattr(owner, '__name__', '')}.{getattr(x, '__qualname__', x)}"
    if not isinstance(x, (type, types.FunctionType)):
        raise _Doubt(f"a callable {type(x).__name__}")
    if id(x) in _ACTIVE:  # met again while digesting itself
        return f"recursive:{x.__module__}.{x.__qualname__}"
    _ACTIVE.add(id(x))
    try:
        if isinstance(x, type):
            return _class_digest(x)
        h = _Hasher(lenient=True)
        h.put("fn", x.__module__, x.__qualname__, _bytecode(x.__code__))
        h.value(x.__defaults__)
        h.value(x.__kwdefaults__)
        for cell in x.__closure__ or ():
            try:
                h.value(cell.cell_contents)
            except ValueError:  # an empty cell
                h.put("<empty cell>")
        return h.h.hexdigest()
    finally:
        _ACTIVE.discard(id(x))


@_memo  # code objects are immutable (a function's __code__ can be swapped, not edited)
def _bytecode(code: types.CodeType) -> str:
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            parts.append(_bytecode(c))
        elif isinstance(c, frozenset):  # `x in {"a", "b"}`: ordered by hash, which varies
            parts.append(repr(sorted(map(repr, c))))
        else:
            parts.append(repr(c))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _class_digest(cls: type) -> str:
    """A class: its qualified name and, unless torch's or the standard library's (their versions
    are in the key), the source of the file defining it (a superset of the class's own source:
    ``inspect.getsource`` parses the whole file for each class, 1.5 s for MiniLM's 25), its
    package's version and every attribute and method of every class of its MRO (the bytecode
    running, should it differ from the file). Not memoized: class attributes can be set."""
    top = cls.__module__.split(".")[0]
    if top == "torch" or top in sys.stdlib_module_names:
        return "class:" + _qualname(cls)
    path = _class_file(cls)
    mtime = os.path.getmtime(path) if path and os.path.exists(path) else None
    h = _Hasher(lenient=True)
    h.put("class", _qualname(cls), _source_digest(cls, path, mtime),
          _package_version(cls.__module__.split(".")[0]))
    for k in cls.__mro__[1:]:
        h.put("base", _code_digest(k))
    for name, attr in vars(cls).items():
        if name in _CLASS_SKIP:
            continue
        h.put(name)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        elif isinstance(attr, property):
            attr = (attr.fget, attr.fset)
        h.value(attr)
    return h.h.hexdigest()


def _source_digest(cls: type, path: str | None, mtime: float | None) -> str:
    """The hash of the file defining ``cls`` (from disk, else as ``linecache`` holds it: a
    notebook cell); ``_Doubt`` when there is none."""
    digest = _file_hash(path, mtime) if path and mtime is not None else ""
    if not digest and path:
        lines = linecache.getlines(path)
        digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:16] if lines else ""
    if not digest:
        raise _Doubt(f"no source for {_qualname(cls)}")
    return digest


def _class_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None


@_memo
def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except (PackageNotFoundError, ValueError):
        return ""


def _frontend_sources() -> list[tuple[str, str]]:
    """The hash of each source file capture runs (rtinfer's frontends and IR)."""
    root = Path(__file__).parent
    out = []
    for sub in ("frontends", "ir"):
        for path in sorted((root / sub).rglob("*.py")):
            out.append((str(path.relative_to(root)), _file_hash(str(path),
                                                                 os.path.getmtime(path))))
    return out


def model_fingerprint(model: Any, example_inputs: Any = None,
                      dynamic_dims: Any = None) -> str | None:
    """A digest that differs whenever capturing ``model`` with these inputs could give another
    IR, computed without capturing it; None when the hasher cannot vouch for the model (the
    compile then keys on the captured IR). ``model``: an ``nn.Module``, an ``onnx.ModelProto``
    or the path of an ``.onnx`` file (with its external data files)."""
    h = _Hasher()
    try:
        if isinstance(model, (str, os.PathLike)):
            h.put("onnx-file", _package_version("onnx"))
            _onnx_file(h, Path(model))
        elif type(model).__name__ == "ModelProto":
            from onnx.external_data_helper import uses_external_data

            if any(uses_external_data(t) for t in model.graph.initializer):
                return None  # its external data would be read relative to the working dir
            h.put("onnx-proto", _package_version("onnx"))
            h.h.update(model.SerializeToString())
        elif isinstance(model, torch.nn.Module):
            h.put("torch-module", torch.get_default_dtype(), sys.version)
            h.value(model)
            mm = torch.nn.modules.module
            h.value([mm._global_forward_hooks, mm._global_forward_pre_hooks])
            inputs = _Hasher(tensor_values=False)  # their values do not shape the capture
            inputs.value(example_inputs)
            h.put("inputs", inputs.h.hexdigest())
        else:
            return None
        h.value(dynamic_dims)
        h.put(*_frontend_sources())
    except _Doubt:
        return None
    except Exception:  # a model the hasher trips on, however it trips: capture decides
        return None
    return h.h.hexdigest()


def _onnx_file(h: _Hasher, path: Path) -> None:
    import onnx

    from rtinfer.frontends.external_data import check_external_data

    if not path.is_file():  # a FIFO or device would block or never end: capture says why
        raise _Doubt(f"{path} is not a regular file")
    blob = path.read_bytes()
    h.h.update(blob)
    model = onnx.load_model_from_string(blob)
    # the one check, before any read: an unsafe reference makes the fingerprint give up, and
    # capture then rejects the model naming it
    refs = check_external_data(model, path.parent, str(path))
    for ref in sorted({(r.location, r.path) for r in refs}):
        h.put("external", ref[0])
        h.h.update(ref[1].read_bytes())


def model_key(fingerprint: str, target: str, pipeline: str, backend: str,
              data_digest: str = "") -> str:
    """The key of a fingerprint entry: the model's fingerprint with the compile settings (as
    ``cache_key``)."""
    return _settings_key({"model": fingerprint}, target, pipeline, backend, data_digest)


def lookup_model(root: Path, key: str) -> tuple[str, dict | None] | None:
    """The capture-keyed entry and the eager I/O structure that fingerprint entry ``key``
    names, or None."""
    path = root / "models" / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        entry, torch_io = saved["cache_key"], saved["torch_io"]
        if not isinstance(entry, str) or not (torch_io is None or isinstance(torch_io, dict)):
            raise ValueError("malformed")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    return entry, torch_io


def store_model(root: Path, key: str, entry: str, torch_io: dict | None) -> bool:
    """Write fingerprint entry ``key`` (atomically) naming entry ``entry``."""
    folder = root / "models"
    tmp = folder / f".tmp-{key[:16]}-{temp_tag()}.json"
    try:
        _prepare(root)
        _prepare(folder)
        tmp.write_text(json.dumps({"cache_key": entry, "torch_io": torch_io}) + "\n")
        os.replace(tmp, folder / f"{key}.json")
        return True
    except (OSError, CacheDirError):
        tmp.unlink(missing_ok=True)
        return False


# -- one compile's view of the cache ----------------------------------------------------------


@dataclass
class CacheHit:
    """A compile the cache answered: the optimized graph (with the eager I/O structure) and
    ``record``, what the cold compile reported (``frontend``, ``passes``, ``ops_before``,
    ``ops_after``, ``cold_timings``, ``auto``)."""

    graph: Graph
    record: dict[str, Any]
    by: str  # "model": found by the model's fingerprint (capture skipped); "ir": by the IR


class NoCache:
    """``compile(cache=False)``: never hits, stores nothing."""

    state = "off"
    root: Path | None = None
    where = ""
    key = ""

    def recall(self, model: Any, example_inputs: Any, dynamic_dims: Any) -> CacheHit | None:
        return None

    def lookup(self, graph: Graph, read: bool = True) -> CacheHit | None:
        return None

    def store(self, graph: Graph, input_names: list[str], options: dict[str, Any],
              record: dict[str, Any]) -> None:
        pass


class CompileCache:
    """The compile cache in ``root`` as one compile with these settings sees it. Before
    capture, ``recall`` looks the model up by its fingerprint; after capture, ``lookup`` keys
    the captured IR and looks that up; ``store`` writes what was missed. ``state`` is "miss"
    until a lookup hits; ``key`` is the capture-keyed entry once known."""

    def __init__(self, root: Path, target: str, pipeline: str, backend: str,
                 data_digest: str = ""):
        self.root = root
        self.where = str(root)
        self.settings = (target, pipeline, backend, data_digest)
        self.key = ""
        self.fingerprint_key: str | None = None  # the fingerprint entry's key, once there is one
        self.hit: CacheHit | None = None

    @property
    def state(self) -> str:
        return "miss" if self.hit is None else "hit"

    def recall(self, model: Any, example_inputs: Any, dynamic_dims: Any) -> CacheHit | None:
        """The entry that ``model`` 's fingerprint entry names (capture is then skipped), or
        None: no fingerprint, no entry, or any doubt (an nn.Module's I/O structure that cannot
        be rebuilt)."""
        fingerprint = model_fingerprint(model, example_inputs, dynamic_dims)
        if fingerprint is None:
            return None
        self.fingerprint_key = model_key(fingerprint, *self.settings)
        recalled = lookup_model(self.root, self.fingerprint_key)
        if recalled is None:
            return None
        entry, torch_io = recalled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = load_torch_meta(torch_io)
        if (meta is not None) != isinstance(model, torch.nn.Module):
            return None
        found = lookup(self.root, entry)
        if found is None:
            return None
        graph, record = found
        if meta is not None:
            graph.meta["torch"] = meta
        self.key = entry
        self.hit = CacheHit(graph, record, "model")
        return self.hit

    def lookup(self, graph: Graph, read: bool = True) -> CacheHit | None:
        """Key the captured ``graph``; the optimized graph stored under that key (with
        ``graph`` 's eager I/O structure), or None. ``read=False``: the key only (the pipeline
        must run, as with ``verify_each``)."""
        self.key = cache_key(graph, *self.settings)
        found = lookup(self.root, self.key) if read else None
        if found is None:
            return None
        stored, record = found
        stored.meta = dict(graph.meta)  # the eager I/O structure, as captured just now
        self.hit = CacheHit(stored, record, "ir")
        return self.hit

    def store(self, graph: Graph, input_names: list[str], options: dict[str, Any],
              record: dict[str, Any]) -> None:
        """After a miss, write the entry of the optimized ``graph`` (``options`` and ``record``
        as ``store`` takes them); unless the fingerprint found it, the fingerprint entry
        naming it too (not when the eager I/O structure cannot be saved: capture then rebuilds
        it each time)."""
        stored = self.hit is not None or store(self.root, self.key, graph, input_names, options,
                                               record)
        if self.fingerprint_key is None or not stored or (self.hit is not None
                                                    and self.hit.by == "model"):
            return
        meta = graph.meta.get("torch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_io = dump_torch_meta(meta)
        if meta is None or torch_io is not None:
            store_model(self.root, self.fingerprint_key, self.key, torch_io)


def open_cache(cache: bool | str | os.PathLike | None, target: str, pipeline: str,
               backend: str, data_digest: str = "") -> CompileCache | NoCache:
    """The cache ``compile(cache=...)`` asks for: ``True`` (the default folder), a folder, or
    ``False`` (``NoCache``)."""
    root = compile_cache_dir(cache)
    if root is None:
        return NoCache()
    return CompileCache(root, target, pipeline, backend, data_digest)


__all__ = ["CACHE_FORMAT_VERSION", "CacheHit", "CompileCache", "NoCache", "cache_key",
           "graph_digest", "lookup", "lookup_model", "model_fingerprint", "model_key",
           "open_cache", "pipeline_fingerprint", "store", "store_model", "versions"]
