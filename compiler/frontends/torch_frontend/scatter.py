"""In-place writes, as ``torch.export`` functionalizes them: ``x[..., a:b] = y`` becomes
``slice_scatter`` (``select_scatter`` for one index) and a write of a whole tensor ``copy``.
Hugging Face's ``shift_tokens_right`` (BART, Marian, mBART) is made of them.

    copy(self, src)                          -> expand(cast(src, self.dtype), self.shape)
    slice_scatter(self, src, d, a, b, 1)     -> concat(self[.., :a], src, self[.., b:]) along d
    select_scatter(self, src, d, i)          -> slice_scatter(self, unsqueeze(src, d), d, i, i+1)

A strided or symbolic slice is kept whole, as an ``aten_call``.
"""

from __future__ import annotations

from typing import Any

from rtinfer.frontends.torch_frontend.aten_call import convert_aten_call
from rtinfer.frontends.torch_frontend.context import Ctx, converts, norm_axis
from rtinfer.ir.graph import Value


@converts("aten.copy.default")
def _copy(cx: Ctx, self: Value, src: Value, non_blocking: bool = False) -> Value:
    out = cx.cast(src, self.type.dtype)
    if out.type.shape != self.type.shape:  # copy_ broadcasts src to self
        out = cx.op("expand", out, shape=list(self.type.shape))
    return out


def _bound(i: Any, size: int) -> int:
    """A slice bound as Python clamps it (``None``: the end)."""
    if i is None:
        return size
    i = int(i)
    if i < 0:
        i += size
    return min(max(i, 0), size)


def _scatter(cx: Ctx, self: Value, src: Value, ax: int, start: int, end: int) -> Value:
    n = self.type.shape[ax]
    parts = []
    if start > 0:
        parts.append(cx.op("slice", self, starts=[0], ends=[start], axes=[ax], steps=[1]))
    parts.append(cx.cast(src, self.type.dtype))
    if end < n:
        parts.append(cx.op("slice", self, starts=[end], ends=[n], axes=[ax], steps=[1]))
    return parts[0] if len(parts) == 1 else cx.op("concat", *parts, axis=ax)


@converts("aten.slice_scatter.default")
def _slice_scatter(cx: Ctx, self: Value, src: Value, dim: int = 0, start: Any = None,
                   end: Any = None, step: int = 1) -> Value | list[Value]:
    ax = norm_axis(dim, self.type.rank)
    n = self.type.shape[ax]
    static = isinstance(n, int) and all(isinstance(b, (int, type(None))) for b in (start, end))
    if not static or step != 1:
        return convert_aten_call(cx, (self, src, dim, start, end, step), {})
    start, end = _bound(start, n), _bound(end, n)
    return _scatter(cx, self, src, ax, start, max(start, end))


@converts("aten.select_scatter.default")
def _select_scatter(cx: Ctx, self: Value, src: Value, dim: int, index: Any) -> Value:
    ax = norm_axis(dim, self.type.rank)
    n = self.type.shape[ax]
    if not isinstance(n, int) or not isinstance(index, int):
        return convert_aten_call(cx, (self, src, dim, index), {})
    i = index + n if index < 0 else index
    return _scatter(cx, self, cx.op("unsqueeze", src, axes=[ax]), ax, i, i + 1)
