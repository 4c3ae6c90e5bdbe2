"""Pipeline strings: ``"fold-constants,fuse{max-depth=8,mode=fast},dce"`` -> pass invocations.

Grammar (whitespace allowed between tokens)::

    pipeline := [item ("," item)*]
    item     := NAME ["{" [NAME "=" value ("," NAME "=" value)*] "}"]
    value    := characters other than , { } "   |   "double-quoted text"

A NAME may also be a named pipeline (``O1``), which expands in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rtinfer.errors import PipelineError
from rtinfer.pass_manager.registry import Pass, get_pass, get_pipeline

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass
class PassInvocation:
    """One pass in a pipeline, with its options resolved to typed values (defaults filled)."""

    pass_: Pass
    options: dict[str, Any] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)  # the options written explicitly

    @property
    def name(self) -> str:
        return self.pass_.name

    @property
    def label(self) -> str:
        """The invocation's text form: ``fuse{max-depth=4}`` (only given options)."""
        if not self.given:
            return self.name
        opts = ",".join(f"{k}={self.pass_.options[k].format(v)}" for k, v in self.given.items())
        return f"{self.name}{{{opts}}}"

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"<PassInvocation {self.label}>"


def invocation(name: str, **options: Any) -> PassInvocation:
    """Build one invocation from Python values: ``invocation("fuse", max_depth=4)``."""
    p = get_pass(name)
    given = {k.replace("_", "-"): v for k, v in options.items()}
    resolved = p.resolve_options(given)
    return PassInvocation(p, resolved, {k: resolved[k] for k in given})


class _Parser:
    def __init__(self, text: str, expanding: tuple[str, ...] = ()):
        self.text = text
        self.i = 0
        self.expanding = expanding

    def error(self, message: str, at: int | None = None) -> PipelineError:
        at = self.i if at is None else at
        caret = f"\n  {self.text}\n  {' ' * at}^"
        where = f" (in pipeline {self.expanding[-1]!r})" if self.expanding else ""
        return PipelineError(f"malformed pipeline at column {at + 1}{where}: {message}{caret}")

    def skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def name(self, what: str) -> tuple[str, int]:
        self.skip_ws()
        start = self.i
        while self.peek() and self.peek() in _NAME_CHARS:
            self.i += 1
        if self.i == start:
            found = repr(self.peek()) if self.peek() else "end of string"
            raise self.error(f"expected {what}, found {found}")
        return self.text[start:self.i], start

    def value(self) -> tuple[str, int]:
        self.skip_ws()
        start = self.i
        if self.peek() == '"':
            end = self.text.find('"', self.i + 1)
            if end < 0:
                raise self.error("unterminated string")
            self.i = end + 1
            return self.text[start + 1:end], start
        while self.peek() and self.peek() not in ',{}"':
            self.i += 1
        raw = self.text[start:self.i].strip()
        if not raw:
            raise self.error("expected an option value")
        return raw, start

    def parse(self) -> list[PassInvocation]:
        out: list[PassInvocation] = []
        self.skip_ws()
        if not self.peek():
            return out
        while True:
            out.extend(self.item())
            self.skip_ws()
            c = self.peek()
            if not c:
                return out
            if c != ",":
                raise self.error(f"expected ',' between passes, found {c!r}")
            self.i += 1
            self.skip_ws()
            if not self.peek():
                raise self.error("expected a pass name after ','")

    def item(self) -> list[PassInvocation]:
        name, at = self.name("a pass name")
        self.skip_ws()
        raw: list[tuple[str, str, int]] = []
        if self.peek() == "{":
            brace = self.i
            self.i += 1
            self.skip_ws()
            if not self.peek():
                raise self.error(f"unbalanced '{{': no '}}' closes the options of '{name}'",
                                 brace)
            if self.peek() == "}":
                self.i += 1
            else:
                while True:
                    key, kat = self.name("an option name")
                    self.skip_ws()
                    if self.peek() != "=":
                        raise self.error(f"expected '=' after option name '{key}'")
                    self.i += 1
                    val, _ = self.value()
                    raw.append((key, val, kat))
                    self.skip_ws()
                    c = self.peek()
                    if c == "}":
                        self.i += 1
                        break
                    if c == ",":
                        self.i += 1
                        continue
                    if not c:
                        raise self.error(f"unbalanced '{{': no '}}' closes the options of "
                                         f"'{name}'", brace)
                    raise self.error(f"expected ',' or '}}' in the options of '{name}', "
                                     f"found {c!r}")
        elif self.peek() == "}":
            raise self.error("unbalanced '}'")

        named = get_pipeline(name)
        if named is not None:
            if raw:
                raise self.error(f"named pipeline '{name}' takes no options", at)
            if name in self.expanding:
                raise PipelineError(f"pipeline '{name}' refers to itself")
            return _Parser(named.pipeline, (*self.expanding, name)).parse()
        p = get_pass(name)
        given: dict[str, Any] = {}
        for key, val, _kat in raw:
            opt = p.option(key)
            if key in given:
                raise PipelineError(f"option '{key}' of pass '{name}' is given twice")
            given[key] = opt.parse(val, f"option '{key}' of pass '{name}'")
        options = {k: o.default for k, o in p.options.items()} | given
        return [PassInvocation(p, options, given)]


def parse_pipeline(pipeline: str | Sequence[str | PassInvocation]) -> list[PassInvocation]:
    """Parse a pipeline string (or a list of strings and invocations) into invocations."""
    if isinstance(pipeline, str):
        return _Parser(pipeline).parse()
    out: list[PassInvocation] = []
    for item in pipeline:
        if isinstance(item, PassInvocation):
            out.append(item)
        elif isinstance(item, Pass):
            out.append(PassInvocation(item, item.resolve_options({})))
        elif isinstance(item, str):
            out.extend(_Parser(item).parse())
        else:
            raise PipelineError(f"a pipeline item must be a string or a PassInvocation, "
                                f"got {item!r}")
    return out


def format_pipeline(invocations: Sequence[PassInvocation]) -> str:
    return ",".join(inv.label for inv in invocations)


def check_requirements(invocations: Sequence[PassInvocation]) -> None:
    """Each pass's ``requires`` must have run earlier in the pipeline (not auto-inserted)."""
    seen: set[str] = set()
    for inv in invocations:
        for req in inv.pass_.requires:
            get_pass(req)  # an unknown requirement is reported as an unknown pass
            if req not in seen:
                raise PipelineError(
                    f"pass '{inv.name}' requires '{req}' to run earlier in the pipeline; "
                    f"add '{req}' before '{inv.name}' (or turn the check off: "
                    f"check_requires=False, --no-check-requires)")
        seen.add(inv.name)
