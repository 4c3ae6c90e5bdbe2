"""Pass records and the registry of passes and named pipelines.

A pass is a record (MLIR's pass registration, TVM's ``PassInfo``): a kebab-case name, a one-line
summary, the passes it requires to have run earlier, typed options, and a version. Built-in passes
are records (``@graph_pass``) listed in ``rtinfer/passes/__init__.py``, which installs them into
this registry once (the package face imports it); the registry never imports the passes. Code
outside rtinfer registers its own passes directly::

    @rtinfer.register_pass("strip-relu", summary="remove every relu")
    def strip_relu(graph: Graph, ctx: PassContext) -> None: ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtinfer.errors import PipelineError
from rtinfer.pass_manager.context import PassContext

if TYPE_CHECKING:
    from rtinfer.ir.graph import Graph

PassFn = Callable[["Graph", PassContext], None]

_KEBAB_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Pipeline names (O0..O3) may use capitals; they share the namespace with passes.
_PIPELINE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*$")
_OPTION_TYPES = (int, float, bool, str)


def _type_name(t: type) -> str:
    return {int: "int", float: "float", bool: "bool", str: "str"}[t]


@dataclass(frozen=True)
class Option:
    """A typed pass option: ``Option(int, 8, "maximum fusion depth")``.

    ``type`` is int, float, bool (written ``true``/``false``) or str; ``choices`` restricts a str
    option to an enumeration: ``Option(str, "fast", "how to fuse", choices=("fast", "exact"))``.
    """

    type: type
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in _OPTION_TYPES:
            raise TypeError(f"option type must be int, float, bool or str, got {self.type!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
            if self.type is not str:
                raise TypeError("only str options take choices")
        self.check(self.default, "the default")

    @property
    def type_name(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        return _type_name(self.type)

    def check(self, value: Any, where: str) -> Any:
        """Validate a Python value (an option given as a keyword, or the default)."""
        t = self.type
        if t is bool or isinstance(value, bool):
            ok = t is bool and isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float))
        else:
            ok = isinstance(value, t)
        if not ok:
            raise PipelineError(f"{where}: expected {self.type_name}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise PipelineError(f"{where}: expected one of {', '.join(self.choices)}, "
                                f"got {value!r}")
        return float(value) if t is float else value

    def parse(self, text: str, where: str) -> Any:
        """Parse the text form of a value, as written in a pipeline string."""
        t = self.type
        if t is bool:
            if text not in ("true", "false"):
                raise PipelineError(f"{where}: expected a bool (true or false), got {text!r}")
            return text == "true"
        if t is int:
            try:
                return int(text)
            except ValueError:
                raise PipelineError(f"{where}: expected an int, got {text!r}") from None
        if t is float:
            try:
                return float(text)
            except ValueError:
                raise PipelineError(f"{where}: expected a float, got {text!r}") from None
        return self.check(text, where)

    def format(self, value: Any) -> str:
        """The text form, which parses back (strings with separators are quoted)."""
        if self.type is bool:
            return "true" if value else "false"
        text = str(value)
        if self.type is str and (not text or any(c in text for c in ',{}= ')):
            return f'"{text}"'
        return text


@dataclass
class Pass:
    """A registered pass. Calling it runs it on a graph in place:
    ``ctx = dce_pass(graph)`` or ``fuse_pass(graph, max_depth=4)``."""

    name: str
    fn: PassFn
    summary: str
    requires: tuple[str, ...] = ()
    options: dict[str, Option] = field(default_factory=dict)
    version: int = 1
    # Rules this pass expects to apply on the models it is meant for: the match report shows
    # the closest near miss of each that did not (see ``PipelineResult.match_report``).
    expects: tuple[str, ...] = ()
    # analyses (PipelineContext) still valid after this pass changed the graph
    preserves: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _KEBAB_RE.match(self.name):
            raise PipelineError(f"invalid pass name {self.name!r}: pass names are kebab-case "
                                f"(lower-case words joined by '-', e.g. 'fold-constants')")
        if not self.summary or "\n" in self.summary.strip():
            raise PipelineError(f"pass {self.name!r}: the summary must be one non-empty line")
        self.summary = self.summary.strip()
        self.requires = tuple(self.requires)
        self.expects = tuple(self.expects)
        self.preserves = tuple(self.preserves)
        for opt in self.options:
            if not _KEBAB_RE.match(opt):
                raise PipelineError(f"pass {self.name!r}: option name {opt!r} is not kebab-case")
            if not isinstance(self.options[opt], Option):
                raise PipelineError(f"pass {self.name!r}: option {opt!r} must be an Option")

    def __repr__(self) -> str:
        return f"<Pass {self.name} v{self.version}>"

    @property
    def source(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (Python values, checked against the declared types).
        Keys may be spelled ``max-depth`` or ``max_depth``."""
        out = {k: o.default for k, o in self.options.items()}
        for key, value in given.items():
            name = key.replace("_", "-")
            opt = self.option(name)
            out[name] = opt.check(value, f"option '{name}' of pass '{self.name}'")
        return out

    def option(self, name: str) -> Option:
        try:
            return self.options[name]
        except KeyError:
            valid = ", ".join(self.options) or "none"
            hint = _close(name, self.options)
            raise PipelineError(f"unknown option '{name}' for pass '{self.name}'{hint}; "
                                f"valid options: {valid}") from None

    def __call__(self, graph: Graph, ctx: PassContext | None = None, /,
                 **options: Any) -> PassContext:
        """Run the pass alone (no instruments) and return its context (stats, applications)."""
        if ctx is None:
            ctx = PassContext(pass_name=self.name)
        ctx.expects |= set(self.expects)
        ctx.options = self.resolve_options({**ctx.options, **options})
        self.fn(graph, ctx)
        return ctx


@dataclass(frozen=True)
class NamedPipeline:
    name: str
    pipeline: str
    summary: str = ""


_PASSES: dict[str, Pass] = {}
_PIPELINES: dict[str, NamedPipeline] = {}


def _close(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def register_pass(p: Pass | str, fn: PassFn | None = None, /, *, summary: str = "",
                  requires: Sequence[str] = (), options: dict[str, Option] | None = None,
                  version: int = 1, replace: bool = False, expects: Sequence[str] = (),
                  preserves: Sequence[str] = ()):
    """Register a pass, from inside rtinfer or out. Three spellings::

        register_pass(Pass("my-pass", fn, "summary"))          # a record
        register_pass("my-pass", fn, summary="...")            # a function
        @register_pass("my-pass", summary="...")               # a decorator

    Returns the ``Pass`` (the decorator form replaces the function by its ``Pass``, which is
    callable). Registering a different function under a taken name is an error unless
    ``replace=True``; re-registering the same function (a reloaded module) replaces it.
    """
    if isinstance(p, Pass):
        return _add(p, replace)
    if fn is None:
        def decorator(f: PassFn) -> Pass:
            return register_pass(p, f, summary=summary, requires=requires, options=options,
                                 version=version, replace=replace, expects=expects,
                                 preserves=preserves)
        return decorator
    if not summary:
        doc = (fn.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
    return _add(Pass(p, fn, summary, tuple(requires), dict(options or {}), version,
                     tuple(expects), tuple(preserves)), replace)


def graph_pass(name: str, *, summary: str = "", requires: Sequence[str] = (),
               options: dict[str, Option] | None = None, version: int = 1,
               expects: Sequence[str] = (), preserves: Sequence[str] = ()
               ) -> Callable[[PassFn], Pass]:
    """Decorator declaring ``def fn(graph, ctx) -> None`` as the pass record ``name``. It
    registers nothing: a package installs its records with ``install`` (rtinfer's built-ins are
    listed in ``rtinfer/passes/__init__.py``), or ``register_pass`` registers one directly."""
    def decorator(fn: PassFn) -> Pass:
        doc = (fn.__doc__ or "").strip()
        return Pass(name, fn, summary or (doc.splitlines()[0] if doc else ""), tuple(requires),
                    dict(options or {}), version, tuple(expects), tuple(preserves))
    return decorator


def install(passes: Sequence[Pass], pipelines: Sequence[NamedPipeline] = ()) -> None:
    """Register a package's pass records and named pipelines, once: installing the same records
    again (a module reloaded) is a no-op; another pass under a taken name is an error."""
    for p in passes:
        _add(p, replace=False)
    for np_ in pipelines:
        register_pipeline(np_.name, np_.pipeline, np_.summary, replace=_PIPELINES.get(
            np_.name) == np_)


def _add(p: Pass, replace: bool) -> Pass:
    old = _PASSES.get(p.name)
    if old is not None and not replace and old.source != p.source:
        raise PipelineError(f"pass '{p.name}' is already registered (by {old.source}); "
                            f"pick another name or pass replace=True")
    if p.name in _PIPELINES:
        raise PipelineError(f"'{p.name}' is already the name of a pipeline")
    _PASSES[p.name] = p
    return p


def unregister_pass(name: str) -> None:
    """Remove a pass (tests registering throwaway passes clean up with this)."""
    _PASSES.pop(name, None)


def register_pipeline(name: str, pipeline: str, summary: str = "",
                      replace: bool = False) -> NamedPipeline:
    """Name a pipeline string; the name can then be used in pipelines (``"O1,my-pass"``).
    The string is parsed when used, so it may name passes registered later."""
    if not _PIPELINE_NAME_RE.match(name):
        raise PipelineError(f"invalid pipeline name {name!r}")
    if name in _PASSES:
        raise PipelineError(f"'{name}' is already the name of a pass")
    if name in _PIPELINES and not replace and _PIPELINES[name].pipeline != pipeline:
        raise PipelineError(f"pipeline '{name}' is already registered "
                            f"as {_PIPELINES[name].pipeline!r}")
    np_ = NamedPipeline(name, pipeline, summary)
    _PIPELINES[name] = np_
    return np_


# Loads installed plugins (entry points) the first time a name is missing or passes are
# listed; ``rtinfer.pass_manager.plugins`` sets it (the registry imports no plugin code).
plugin_loader: Callable[[], object] | None = None


def _load_installed_plugins() -> None:
    if plugin_loader is not None:
        plugin_loader()


def get_pass(name: str) -> Pass:
    if name not in _PASSES and name not in _PIPELINES:
        _load_installed_plugins()  # an installed package may offer it (entry points)
    try:
        return _PASSES[name]
    except KeyError:
        valid = ", ".join(sorted(_PASSES))
        named = ", ".join(sorted(_PIPELINES))
        raise PipelineError(f"unknown pass '{name}'{_close(name, [*_PASSES, *_PIPELINES])}; "
                            f"valid passes: {valid}"
                            + (f"; named pipelines: {named}" if named else "")) from None


def get_pipeline(name: str) -> NamedPipeline | None:
    if name not in _PIPELINES and name not in _PASSES:
        _load_installed_plugins()
    return _PIPELINES.get(name)


def list_passes() -> list[Pass]:
    _load_installed_plugins()
    return [_PASSES[k] for k in sorted(_PASSES)]


def list_pipelines() -> list[NamedPipeline]:
    _load_installed_plugins()
    return [_PIPELINES[k] for k in sorted(_PIPELINES)]
