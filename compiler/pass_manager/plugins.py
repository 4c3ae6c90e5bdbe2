"""Pass plugins: passes that live outside rtinfer, loaded from a file or an installed package.

    rtinfer opt model.ir --load my_pass.py --pipeline "my-pass,dce"     # one file
    rtinfer.load_pass_plugin("my_pass.py")                              # the same from Python

A plugin file is a Python module. Its passes become known in either of two ways: the module
registers them itself (``@rtinfer.register_pass``), or it defines ``Pass`` records
(``@rtinfer.graph_pass``) or ``NamedPipeline`` records at module level, which the loader installs.

An installed package offers its passes through the entry-point group ``rtinfer.passes``
(as ``mlir-opt --load-pass-plugin`` does for a shared library)::

    [project.entry-points."rtinfer.passes"]
    my_passes = "my_package.passes"          # a module, a Pass, a list of them, or a function

They are loaded the first time a pass name is not found and before passes are listed, once per
process. A plugin that fails to import is an error naming the plugin, not a traceback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from rtinfer.errors import PipelineError
from rtinfer.pass_manager import registry

GROUP = "rtinfer.passes"
_entry_points_loaded = False


def _failure(what: str, e: BaseException) -> PipelineError:
    # the plugin's own frame (file and line) is what its author needs, not rtinfer's frames
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return PipelineError(f"{what} failed to load: {type(e).__name__}: {e}{at}")


def _install_from(obj: Any, what: str) -> list[str]:
    """Install the Pass / NamedPipeline records ``obj`` holds; returns the pass names."""
    if isinstance(obj, ModuleType):
        items = [v for k, v in vars(obj).items() if not k.startswith("_")]
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        items = [obj]
    names = []
    for item in items:
        if isinstance(item, registry.Pass):
            # a pass the module already registered itself is the same record: no-op
            if registry._PASSES.get(item.name) is not item:
                registry.install([item])
            names.append(item.name)
        elif isinstance(item, registry.NamedPipeline):
            registry.install([], [item])
        elif isinstance(obj, ModuleType) or isinstance(item, ModuleType):
            continue  # a module's other attributes (imports, helpers) are not records
        elif callable(item) and not inspect.signature(item).parameters:
            before = set(registry._PASSES)
            result = item()
            names += sorted(set(registry._PASSES) - before)
            if result is not None:
                names += _install_from(result, what)
        else:
            raise PipelineError(f"{what} gave {type(item).__name__!s}, expected a module, a "
                                f"Pass, a list of them or a function of no arguments")
    return names


def load_pass_plugin(path: str | Path) -> list[str]:
    """Import the Python file ``path`` and install the passes it defines; returns the names of
    the passes it registered or defined."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"pass plugin {str(p)!r} does not exist or is not a file")
    if p.suffix != ".py":
        raise PipelineError(f"pass plugin {str(p)!r} is not a Python file (.py)")
    # a stable module name per file: loading the same file twice replaces its passes (the
    # registry accepts the same function source again) instead of clashing
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:12]
    name = f"rtinfer_plugin_{p.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PipelineError(f"pass plugin {str(p)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    before = set(registry._PASSES)
    try:
        spec.loader.exec_module(module)
    except PipelineError as e:
        sys.modules.pop(name, None)
        raise PipelineError(f"pass plugin {str(p)!r}: {e}") from None
    except Exception as e:  # the plugin's own code: any error it raises is the plugin's
        sys.modules.pop(name, None)
        raise _failure(f"pass plugin {str(p)!r}", e) from None
    registered = set(registry._PASSES) - before
    return sorted(registered | set(_install_from(module, f"pass plugin {str(p)!r}")))


def load_entry_point_plugins() -> list[str]:
    """Load every installed ``rtinfer.passes`` entry point, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names: list[str] = []
    for ep in entry_points(group=GROUP):
        what = f"pass plugin entry point {ep.name!r} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as e:
            raise _failure(what, e) from None
        names += _install_from(obj, what)
    return names


registry.plugin_loader = load_entry_point_plugins
