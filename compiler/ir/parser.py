"""The IR text form, parsing side: a hand-written tokenizer and recursive-descent parser.

``parse(text)`` reads one ``func`` (syntax in ``docs/ir-text.md``) into a ``Graph``. Node result
types are optional: when absent the op table infers them; when present they are recorded as
written, so ill-typed text parses and the verifier reports it. Every error is a ``ParseError``
with the 1-based line and column of the offending token.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtinfer.errors import IRError, ParseError
from rtinfer.ir.constants import ElidedTensor, check_constant_size
from rtinfer.ir.graph import NO_PROVENANCE, Graph, Node, Provenance, Value
from rtinfer.ir.ops import OPS, get_op
from rtinfer.ir.types import Dim, DType, QuantParams, TensorType, make_dim, parse_dim

_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>(?://|\#)[^\n]*)
  | (?P<elided>elided<(?P<digest>[^>\n]*)>)
  | (?P<dense>dense<\s*\[[^\[\]<>"\#/]*\]\s*>)  # a flat list without comments: fast path
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<global>@[A-Za-z0-9_.]+)
  | (?P<arrow>->)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,=:*+/\-])
""", re.VERBOSE)

_INT_RE = re.compile(r"-?\d+")
_FLOAT_RE = re.compile(r"-?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?|inf|nan)")
_DIM_TOKENS = {"ident", "number"}
_DIM_PUNCT = set("*+-/()")
# Bounds that keep hostile text from exhausting the stack or the CPU. Real graphs nest lists,
# dense<[...]> and functions a few levels deep and write dims of a handful of tokens.
MAX_NESTING = 64
MAX_DIM_TOKENS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_INT_LIMIT = 2**1024  # the first integer that float() cannot convert


def _as_float(v: int | float) -> float:
    if isinstance(v, int) and not -_FLOAT_INT_LIMIT < v < _FLOAT_INT_LIMIT:
        return math.inf if v > 0 else -math.inf
    return float(v)


@dataclass(frozen=True)
class Token:
    kind: str  # value, global, arrow, number, ident, string, elided, punct, eof
    text: str
    pos: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of input"
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"'{text}'"


class _Parser:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.tokens = self._tokenize()
        self.i = 0
        self.depth = 0

    # -- errors and positions -----------------------------------------------------------------

    def where(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, pos)
        return line, pos - self.line_starts[line - 1] + 1

    def error(self, at: Token | int, message: str) -> ParseError:
        pos = at if isinstance(at, int) else at.pos
        line, col = self.where(pos)
        return ParseError(message, line, col, self.source, self.text)

    def _tokenize(self) -> list[Token]:
        tokens: list[Token] = []
        pos, n = 0, len(self.text)
        while pos < n:
            m = _TOKEN_RE.match(self.text, pos)
            if m is None:
                ch = self.text[pos]
                if ch == '"':
                    raise self.error(pos, "unterminated string: expected a closing '\"' before "
                                          "the end of the line")
                raise self.error(pos, f"unexpected character {ch!r}")
            kind = m.lastgroup
            if kind == "digest":
                kind = "elided"
            if kind not in ("ws", "comment"):
                tokens.append(Token(kind, m.group(), pos))
            pos = m.end()
        tokens.append(Token("eof", "", n))
        return tokens

    @contextlib.contextmanager
    def nested(self, at: Token, what: str) -> Iterator[None]:
        """One level of nesting (a list, a dense<[...]> row, a nested func), bounded so that
        deep nesting is a ParseError rather than a RecursionError."""
        if self.depth >= MAX_NESTING:
            raise self.error(at, f"{what} nested deeper than {MAX_NESTING} levels")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def int64(self, value: int, tok: Token, what: str = "integer") -> int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise self.error(tok, f"{what} {tok.describe()} does not fit in 64 bits")
        return value

    # -- token helpers ------------------------------------------------------------------------

    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def at(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind in ("punct", "arrow", "ident") and tok.text == text

    def accept(self, text: str) -> Token | None:
        return self.next() if self.at(text) else None

    def expect(self, text: str, what: str | None = None) -> Token:
        if self.at(text):
            return self.next()
        raise self.error(self.peek(), f"expected {what or repr(text)}, found "
                                      f"{self.peek().describe()}")

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.peek().kind == kind:
            return self.next()
        raise self.error(self.peek(), f"expected {what}, found {self.peek().describe()}")

    # -- types --------------------------------------------------------------------------------

    def parse_dtype(self) -> DType:
        tok = self.expect_kind("ident", "a dtype (f32, i8, ...)")
        try:
            return DType.parse(tok.text)
        except IRError as e:
            raise self.error(tok, str(e)) from None

    def parse_dim_expr(self, allow_negative: bool = False) -> tuple[Dim | int | float, Token]:
        """A dim: an int or a symbolic expression like ``B*S``, up to ``,`` or ``]``."""
        first = self.peek()
        depth, toks = 0, []
        while True:
            tok = self.peek()
            if tok.kind in _DIM_TOKENS or (tok.kind == "punct" and tok.text in _DIM_PUNCT):
                if tok.text == "(":
                    depth += 1
                elif tok.text == ")":
                    if depth == 0:
                        break
                    depth -= 1
                toks.append(self.next())
                if len(toks) > MAX_DIM_TOKENS:
                    raise self.error(first, f"dim expression longer than {MAX_DIM_TOKENS} "
                                            "tokens")
            else:
                break
        if not toks:
            raise self.error(first, f"expected a dim (an int or a symbol like B), found "
                                    f"{first.describe()}")
        last = toks[-1]
        src = self.text[first.pos:last.pos + len(last.text)]
        if len(toks) == 1 and first.kind == "number":
            if re.fullmatch(r"-?\d+", src):
                v = self.int64(int(src), first, "dim")
                if v < 0 and not allow_negative:
                    raise self.error(first, f"negative dim {v}")
                return v, first
            if allow_negative:
                return float(src), first
            raise self.error(first, f"expected an integer dim, found {first.describe()}")
        try:
            d = make_dim(parse_dim(src))
        except IRError as e:
            raise self.error(first, str(e)) from None
        if isinstance(d, int):
            self.int64(d, first, "dim")
        return d, first

    def parse_type(self) -> TensorType:
        start = self.peek()
        dtype = self.parse_dtype()
        self.expect("[", f"'[' to start the shape of a {dtype} type")
        shape: list[Dim] = []
        if not self.at("]"):
            while True:
                d, _ = self.parse_dim_expr()
                shape.append(d)
                if not self.accept(","):
                    break
        self.expect("]", "',' or ']' in a shape")
        quant = None
        if self.at("q") and self.at("(", 1):
            quant = self.parse_quant()
        try:
            return TensorType(dtype, tuple(shape), quant)
        except IRError as e:
            raise self.error(start, str(e)) from None

    def parse_type_list(self) -> list[TensorType]:
        types = [self.parse_type()]
        while self.accept(","):
            types.append(self.parse_type())
        return types

    def parse_quant(self) -> QuantParams:
        q = self.expect("q")
        kwargs = self.parse_kwargs("quantization parameters")
        unknown = set(kwargs) - {"axis", "scale", "zp"}
        if unknown or "scale" not in kwargs or "zp" not in kwargs:
            raise self.error(q, "expected q(scale=..., zp=...) or q(axis=N, scale=[...], "
                                f"zp=[...]), found keys {', '.join(sorted(kwargs))}")
        try:
            axis = kwargs.get("axis")
            if axis is not None and not isinstance(axis, int):
                raise IRError(f"quantization axis must be an int, got {axis!r}")
            return QuantParams(np.asarray(kwargs["scale"], dtype=np.float32),
                               np.asarray(kwargs["zp"], dtype=np.int64), axis)
        except (IRError, ValueError, TypeError) as e:
            raise self.error(q, f"bad quantization parameters: {e}") from None

    def parse_kwargs(self, what: str) -> dict[str, Any]:
        with self.nested(self.peek(), what):
            return self._parse_kwargs(what)

    def _parse_kwargs(self, what: str) -> dict[str, Any]:
        self.expect("(", f"'(' to start {what}")
        out: dict[str, Any] = {}
        if not self.at(")"):
            while True:
                key = self.expect_kind("ident", f"a key=value pair in {what}")
                if key.text in out:
                    raise self.error(key, f"{key.text} given twice in {what}")
                self.expect("=", f"'=' after {key.text}")
                out[key.text] = self.parse_attr_value()
                if not self.accept(","):
                    break
        self.expect(")", f"',' or ')' in {what}")
        return out

    # -- attribute values ---------------------------------------------------------------------

    def parse_number(self, bounded: bool = True) -> int | float:
        """An int, a float, ``inf`` or ``nan``. ``bounded``: an int must fit in 64 bits (an
        attribute); a constant's elements are range-checked against its dtype instead."""
        tok = self.peek()
        neg = False
        if tok.kind == "punct" and tok.text == "-" and self.peek(1).text in ("inf", "nan"):
            self.next()
            neg, tok = True, self.peek()
        if tok.kind == "ident" and tok.text in ("inf", "nan"):
            self.next()
            v = float(tok.text)
            return -v if neg else v
        tok = self.expect_kind("number", "a number")
        if re.fullmatch(r"-?\d+", tok.text):
            return self.int64(int(tok.text), tok) if bounded else int(tok.text)
        return float(tok.text)

    def parse_attr_value(self) -> Any:
        tok = self.peek()
        if tok.kind == "number" or (tok.kind == "punct" and tok.text == "-"):
            return self.parse_number()
        if tok.kind == "string":
            return self.parse_string()
        if tok.kind == "punct" and tok.text == "[":
            return self.parse_list()
        if tok.kind == "ident":
            t = tok.text
            if t in ("true", "false"):
                self.next()
                return t == "true"
            if t in ("inf", "nan"):
                return self.parse_number()
            if t == "none":
                self.next()
                return None
            if t == "q" and self.at("(", 1):
                return self.parse_quant()
            if t == "func":
                return self.parse_func()
            if t == "dense":
                raise self.error(tok, "a tensor attribute needs its type first: write "
                                      "TYPE dense<...>, e.g. f32[2] dense<[1.0, 2.0]>")
            if self.at("[", 1):
                t_ = self.parse_type()
                return self.parse_tensor_data(t_, allow_random=True)
            return self.parse_dtype()
        raise self.error(tok, f"expected an attribute value (number, string, true/false, "
                              f"list, dtype, TYPE dense<...>, q(...) or func), found "
                              f"{tok.describe()}")

    def parse_string(self) -> str:
        tok = self.expect_kind("string", "a string")
        try:
            return json.loads(tok.text)
        except json.JSONDecodeError as e:
            raise self.error(tok, f"bad escape in string: {e.msg}") from None

    def parse_list(self) -> list[Any]:
        with self.nested(self.peek(), "a list"):
            return self._parse_list()

    def _parse_list(self) -> list[Any]:
        self.expect("[")
        items: list[Any] = []
        if not self.at("]"):
            while True:
                tok = self.peek()
                generic = (tok.kind in ("string", "elided")
                           or (tok.kind == "punct" and tok.text == "[")
                           or (tok.kind == "ident" and (
                               tok.text in ("true", "false", "none", "inf", "nan", "func")
                               or (tok.text == "q" and self.at("(", 1))
                               or self.at("[", 1)))
                           or (tok.text == "-" and self.peek(1).text in ("inf", "nan")))
                if generic:
                    items.append(self.parse_attr_value())
                else:
                    items.append(self.parse_dim_expr(allow_negative=True)[0])
                if not self.accept(","):
                    break
        self.expect("]", "',' or ']' in a list")
        return items

    def parse_attrs(self) -> dict[str, tuple[Any, Token, Token]]:
        """``{name=value, ...}`` -> name -> (value, name token, value token)."""
        open_ = self.expect("{")
        out: dict[str, tuple[Any, Token, Token]] = {}
        if not self.at("}"):
            while True:
                key = self.peek()
                if key.kind != "ident":
                    raise self.error(key, f"expected an attribute name, found {key.describe()}")
                self.next()
                if key.text in out:
                    raise self.error(key, f"attribute {key.text} given twice")
                self.expect("=", f"'=' after attribute name {key.text}")
                vtok = self.peek()
                out[key.text] = (self.parse_attr_value(), key, vtok)
                if not self.accept(","):
                    break
        if self.peek().kind == "eof":
            raise self.error(self.peek(), f"unterminated attribute list (opened at line "
                                          f"{self.where(open_.pos)[0]}): expected '}}', found "
                                          "end of input")
        self.expect("}", "',' or '}' in the attribute list")
        return out

    # -- constants ----------------------------------------------------------------------------

    def parse_tensor_data(self, t: TensorType, allow_random: bool = True
                          ) -> np.ndarray | ElidedTensor:
        tok = self.peek()
        if not t.is_static:
            raise self.error(tok, f"a constant needs a static shape, got {t}")
        shape = tuple(int(d) for d in t.shape)
        if tok.kind == "elided":
            digest = tok.text[len("elided<"):-1].strip()
            if not re.fullmatch(r"[0-9a-fA-F]+", digest):
                raise self.error(tok, f"expected a hex digest in elided<...>, found {digest!r}")
            self.next()
            return ElidedTensor(t.dtype, shape, digest.lower())
        try:  # elided data is never built; dense and random data are, so bound them first
            check_constant_size(t.dtype, shape)
        except IRError as e:
            raise self.error(tok, str(e)) from None
        if tok.kind == "dense":
            self.next()
            data = self.parse_flat_dense(t, shape, tok)
        elif tok.kind == "ident" and tok.text == "dense":
            self.next()
            self.expect("<", "'<' after dense")
            data = self.parse_dense(t, shape, tok)
            self.expect(">", "'>' to close dense<...")
        elif tok.kind == "ident" and tok.text == "random" and allow_random:
            self.next()
            data = self.parse_random(t, shape, tok)
        else:
            raise self.error(tok, f"expected constant data (dense<...>, random(seed=N) or "
                                  f"elided<digest>), found {tok.describe()}")
        data.setflags(write=False)
        return data

    def parse_dense(self, t: TensorType, shape: tuple[int, ...], at: Token) -> np.ndarray:
        numel = math.prod(shape)
        values: list[tuple[Any, Token]] = []

        def element() -> None:
            tok = self.peek()
            if tok.kind == "ident" and tok.text in ("true", "false"):
                self.next()
                values.append((tok.text == "true", tok))
            elif self.at("["):
                with self.nested(tok, "dense<[...]>"):
                    self.next()
                    if not self.at("]"):
                        while True:
                            element()
                            if not self.accept(","):
                                break
                    self.expect("]", "',' or ']' in dense<[...]>")
            else:
                values.append((self.parse_number(bounded=False), tok))

        splat = not self.at("[")
        element()
        if splat:  # one value checked and converted, then broadcast by numpy (no Python list)
            one = self.to_array([values[0][0]], [values[0][1]], t.dtype, ())
            return np.full(shape, one, dtype=t.dtype.np)
        if len(values) != numel:
            raise self.error(at, f"dense<...> has {len(values)} values but {t} needs {numel}")
        return self.to_array([v for v, _ in values], [k for _, k in values], t.dtype, shape)

    def parse_flat_dense(self, t: TensorType, shape: tuple[int, ...], at: Token) -> np.ndarray:
        """``dense<[a, b, ...]>`` read as one token (large constants parse in linear time)."""
        start = at.text.index("[") + 1
        body = at.text[start:at.text.rindex("]")]
        parts = body.split(",") if body.strip() else []
        numel = math.prod(shape)
        if t.dtype.is_float and len(parts) == numel:
            try:  # numpy converts the strings at C speed; any bad element takes the slow path
                data = np.array(parts, dtype=np.float64)
                return data.astype(t.dtype.np).reshape(shape)
            except ValueError:
                pass
        vals: list[Any] = []
        toks: list[Token] = []
        pos = at.pos + start
        for part in parts:
            text = part.strip()
            tok = Token("number", text, pos + len(part) - len(part.lstrip()))
            if _INT_RE.fullmatch(text):
                vals.append(int(text))
            elif _FLOAT_RE.fullmatch(text):
                vals.append(float(text))
            elif text in ("true", "false"):
                vals.append(text == "true")
            else:
                what = tok.describe() if text else "nothing"
                raise self.error(tok, f"expected a number or true/false in dense<[...]>, found "
                                      f"{what}")
            toks.append(tok)
            pos += len(part) + 1
        if len(vals) != numel:
            raise self.error(at, f"dense<...> has {len(vals)} values but {t} needs {numel}")
        return self.to_array(vals, toks, t.dtype, shape)

    def to_array(self, vals: list[Any], toks: list[Token], dtype: DType,
                 shape: tuple[int, ...]) -> np.ndarray:
        if dtype is DType.bool:
            for v, tok in zip(vals, toks, strict=True):
                if not isinstance(v, bool) and v not in (0, 1):
                    raise self.error(tok, f"expected true or false in a bool constant, found "
                                          f"{tok.describe()}")
            return np.array([bool(v) for v in vals], dtype=np.bool_).reshape(shape)
        if dtype.is_int:
            info = np.iinfo(dtype.np)
            for v, tok in zip(vals, toks, strict=True):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise self.error(tok, f"expected an integer in a {dtype} constant, found "
                                          f"{tok.describe()}")
                if not info.min <= v <= info.max:
                    raise self.error(tok, f"{v} is out of range for {dtype}")
            return np.array(vals, dtype=dtype.np).reshape(shape)
        for v, tok in zip(vals, toks, strict=True):
            if isinstance(v, bool):
                raise self.error(tok, f"expected a number in a {dtype} constant, found "
                                      f"{tok.describe()}")
        # an integer past the float range rounds to +-inf, as a decimal literal like 1e400 does
        # (and as the numpy fast path of parse_flat_dense does); float() of it would raise
        floats = [_as_float(v) for v in vals]
        return np.array(floats, dtype=np.float64).astype(dtype.np).reshape(shape)

    def parse_random(self, t: TensorType, shape: tuple[int, ...], at: Token) -> np.ndarray:
        kw = self.parse_kwargs("random(...)")
        unknown = set(kw) - {"seed", "low", "high"}
        seed = kw.get("seed")
        if (unknown or not isinstance(seed, int) or isinstance(seed, bool)
                or ("low" in kw) != ("high" in kw)):
            raise self.error(at, "expected random(seed=N) or random(seed=N, low=a, high=b)")
        if seed < 0:
            raise self.error(at, f"random(seed={seed}): the seed must be a non-negative integer")
        low, high = kw.get("low"), kw.get("high")
        if low is not None:
            self.check_random_bounds(t.dtype, low, high, at)
        rng = np.random.default_rng(seed)
        if t.dtype.is_float:
            if low is None:
                data = rng.standard_normal(shape)
            else:
                data = rng.uniform(float(low), float(high), shape)
            return data.astype(t.dtype.np)
        if t.dtype.is_int:
            lo, hi = (0, 10) if low is None else (int(low), int(high))
            return rng.integers(lo, hi, shape).astype(t.dtype.np)
        return rng.random(shape) < 0.5

    def check_random_bounds(self, dtype: DType, low: Any, high: Any, at: Token) -> None:
        """``low`` and ``high`` are finite numbers in ``dtype``'s range, ``low < high`` for
        ints (numpy raises its own errors otherwise, or wraps silently on the cast)."""
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.error(at, f"random(low=..., high=...) needs finite numbers, got "
                                     f"{v!r}")
        if dtype.is_int:
            # numpy draws int64s and then casts, so u64 is bounded by int64 too
            lo_min, hi_max = np.iinfo(dtype.np).min, min(np.iinfo(dtype.np).max, INT64_MAX) + 1
            if not (isinstance(low, int) and isinstance(high, int)):
                raise self.error(at, f"random(...) of {dtype} needs integer low and high, got "
                                     f"{low!r} and {high!r}")
            if not lo_min <= low < high <= hi_max:
                raise self.error(at, f"random(low={low}, high={high}) of {dtype} needs "
                                     f"{lo_min} <= low < high <= {hi_max}")
        elif dtype.is_float and not low <= high:
            raise self.error(at, f"random(low={low}, high={high}) needs low <= high")

    # -- functions and nodes ------------------------------------------------------------------

    def parse_func(self) -> Graph:
        with self.nested(self.peek(), "a func"):
            return self._parse_func()

    def _parse_func(self) -> Graph:
        self.expect("func", "'func'")
        name = self.expect_kind("global", "a function name like @main")
        g = Graph(name.text[1:])
        scope: dict[str, tuple[Value, Token]] = {}
        self.expect("(", "'(' to start the parameter list")
        if not self.at(")"):
            while True:
                vtok = self.expect_kind("value", "a parameter like %x")
                self.define(scope, vtok)
                self.expect(":", f"':' and a type after {vtok.text}")
                t = self.parse_type()
                v = g.add_input(t, self.hint(vtok))
                scope[vtok.text] = (v, vtok)
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the parameter list")
        self.expect("->", "'->' and the result types")
        if self.accept("("):
            result_types = [] if self.at(")") else self.parse_type_list()
            self.expect(")", "',' or ')' in the result types")
        else:
            result_types = [self.parse_type()]
        open_ = self.expect("{", "'{' to start the function body")
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                raise self.error(tok, f"unterminated block: the body of @{g.name} (opened at "
                                      f"line {self.where(open_.pos)[0]}) needs 'return' and "
                                      f"'}}', found end of input")
            if tok.kind == "punct" and tok.text == "}":
                raise self.error(tok, f"expected 'return' before '}}' ending @{g.name}")
            if tok.kind == "ident" and tok.text == "return":
                break
            self.parse_node(g, scope)
        ret = self.next()
        outs: list[Value] = []
        if self.peek().kind == "value":
            while True:
                tok = self.next()
                v = self.use(scope, tok)
                k = len(outs)
                if k < len(result_types) and v.type != result_types[k]:
                    raise self.error(tok, f"{tok.text} has type {v.type} but @{g.name} "
                                          f"declares result {k} as {result_types[k]}")
                outs.append(v)
                if not self.accept(","):
                    break
        if len(outs) != len(result_types):
            raise self.error(ret, f"@{g.name} declares {len(result_types)} result(s) but "
                                  f"returns {len(outs)}")
        g.set_outputs(outs)
        if self.peek().kind == "eof":
            raise self.error(self.peek(), f"unterminated block: expected '}}' to close @{g.name}"
                                          f" (opened at line {self.where(open_.pos)[0]}), "
                                          "found end of input")
        self.expect("}", f"'}}' after the return of @{g.name}")
        return g

    @staticmethod
    def hint(tok: Token) -> str | None:
        name = tok.text[1:]
        return None if name.isdigit() else name  # numbers are not name hints

    def define(self, scope: dict[str, tuple[Value, Token]], tok: Token) -> None:
        if tok.text in scope:
            line, col = self.where(scope[tok.text][1].pos)
            raise self.error(tok, f"value {tok.text} defined twice (first at line {line}, "
                                  f"column {col})")

    def use(self, scope: dict[str, tuple[Value, Token]], tok: Token) -> Value:
        if tok.kind != "value":
            raise self.error(tok, f"expected a value like %x, found {tok.describe()}")
        if tok.text not in scope:
            raise self.error(tok, f"undefined value {tok.text}")
        return scope[tok.text][0]

    def parse_node(self, g: Graph, scope: dict[str, tuple[Value, Token]]) -> None:
        names: list[Token] = []
        if self.peek().kind == "value":
            while True:
                tok = self.expect_kind("value", "a result name like %y")
                self.define(scope, tok)
                if any(t.text == tok.text for t in names):
                    raise self.error(tok, f"value {tok.text} defined twice")
                names.append(tok)
                if not self.accept(","):
                    break
            self.expect("=", "'=' after the result names")
        op_tok = self.peek()
        if op_tok.kind != "ident":
            raise self.error(op_tok, f"expected an op name, found {op_tok.describe()}")
        self.next()
        if op_tok.text not in OPS:
            raise self.error(op_tok, f"unknown op '{op_tok.text}': it is not in the op table")
        opdef = get_op(op_tok.text)
        if op_tok.text == "const":
            node = self.parse_const_rest(op_tok, names)
        else:
            node = self.parse_op_rest(opdef, op_tok, names, scope)
        if self.at("loc") and self.at("(", 1):
            self.next()
            self.expect("(")
            origin = self.parse_string()
            self.expect(",", "',' between the two loc(...) strings")
            created = self.parse_string()
            self.expect(")", "')' to close loc(...)")
            node.provenance = Provenance(origin, created)
        g.insert(node)
        for tok, v in zip(names, node.outputs, strict=True):
            v.name = self.hint(tok)
            scope[tok.text] = (v, tok)

    def parse_const_rest(self, op_tok: Token, names: list[Token]) -> Node:
        if len(names) != 1:
            raise self.error(op_tok, f"const has one result, {len(names)} names given")
        t = self.parse_type()
        value = self.parse_tensor_data(t)
        return Node("const", [], {"value": value, "quant": t.quant}, [t], NO_PROVENANCE)

    def parse_op_rest(self, opdef, op_tok: Token, names: list[Token],
                      scope: dict[str, tuple[Value, Token]]) -> Node:
        self.expect("(", f"'(' after {op_tok.text}")
        inputs: list[Value] = []
        if not self.at(")"):
            while True:
                inputs.append(self.use(scope, self.next()))
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the operand list")
        try:
            opdef.check_arity(len(inputs))
        except IRError as e:
            raise self.error(op_tok, str(e)) from None
        raw = self.parse_attrs() if self.at("{") else {}
        attrs = self.complete(opdef, op_tok, raw)
        declared: list[TensorType] | None = None
        colon = self.accept(":")
        if colon:
            declared = self.parse_type_list()
        try:
            inferred = opdef.infer_types([v.type for v in inputs], attrs)
        except IRError as e:
            if declared is None:
                raise self.error(op_tok, f"type inference failed: {e}") from None
            inferred = None  # ill-typed but explicitly typed: the verifier reports it
        if declared is not None and len(declared) != len(names):
            raise self.error(colon, f"wrong number of result types: {len(names)} result "
                                    f"name(s) but {len(declared)} type(s)")
        if inferred is not None and len(inferred) != len(names):
            raise self.error(names[0] if names else op_tok,
                             f"wrong number of results: {op_tok.text} produces "
                             f"{len(inferred)} value(s), {len(names)} name(s) given")
        return Node(op_tok.text, inputs, attrs, declared if declared is not None else inferred)

    def complete(self, opdef, op_tok: Token, raw: dict[str, tuple[Any, Token, Token]]
                 ) -> dict[str, Any]:
        given = {}
        for k, (v, _, _) in raw.items():
            schema = opdef.attrs.get(k)
            if v is None and schema is not None and schema.default is None:
                continue  # `none`: the default
            given[k] = v
        try:
            return opdef.complete_attrs(given, where=op_tok.text)
        except IRError as e:
            at: Token = op_tok
            for k, (v, ktok, vtok) in raw.items():
                if k not in opdef.attrs:
                    at = ktok
                    break
                try:
                    opdef.attrs[k].coerce(v, k)
                except IRError:
                    at = vtok
                    break
            raise self.error(at, str(e)) from None

    def parse_module(self) -> Graph:
        g = self.parse_func()
        if self.peek().kind != "eof":
            raise self.error(self.peek(), f"expected end of input after the function, found "
                                          f"{self.peek().describe()}")
        return g


def parse(text: str, *, source: str = "<ir>") -> Graph:
    """Parse one function in the IR text form into a ``Graph``."""
    p = _Parser(text, source)
    try:
        return p.parse_module()
    except (RecursionError, MemoryError) as e:
        # a safety net: nesting and constant sizes are bounded where they are read, so this
        # names the token where an unforeseen path ran out of stack or memory
        what = "nesting too deep" if isinstance(e, RecursionError) else "out of memory"
        raise p.error(p.peek(), f"{what} while parsing here") from None


def parse_type(text: str, *, source: str = "<type>") -> TensorType:
    """Parse a type like ``f32[B,3,8,8]`` or ``i8[4] q(scale=0.1, zp=0)``."""
    p = _Parser(text, source)
    t = p.parse_type()
    if p.peek().kind != "eof":
        raise p.error(p.peek(), f"expected end of input after the type, found "
                                f"{p.peek().describe()}")
    return t
