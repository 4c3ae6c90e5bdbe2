"""Arena offsets for a plan's intermediates: each buffer lives from the step writing it to the
last step reading it (a view extends its base), and buffers are placed largest first at the
lowest offset that overlaps no buffer alive at the same time."""

from __future__ import annotations

from collections.abc import Sequence

from rtinfer.backends.native.plan import ALIAS, ARENA, Buf, StepRec

ALIGN = 64  # bytes: every arena buffer starts on a cache line


def _round(n: int) -> int:
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(bufs: Sequence[Buf], steps: Sequence[StepRec]) -> int:
    """Set the offsets of the ARENA buffers; returns the arena's size in bytes."""
    for k, s in enumerate(steps):
        for b in s.reads + s.writes:
            while bufs[b].kind == ALIAS:  # an alias keeps its base alive
                b = bufs[b].base
            buf = bufs[b]
            buf.first, buf.last = min(buf.first, k), max(buf.last, k)
    arena = [b for b in bufs if b.kind == ARENA and b.last >= 0]
    placed: list[Buf] = []
    size = 0
    for b in sorted(arena, key=lambda b: -b.nbytes):
        need = _round(b.nbytes)
        busy = sorted((p.offset, p.offset + _round(p.nbytes)) for p in placed
                      if not (p.last < b.first or b.last < p.first))
        off = 0
        for lo, hi in busy:
            if off + need <= lo:
                break
            off = max(off, hi)
        b.offset = off
        size = max(size, off + need)
        placed.append(b)
    return size


__all__ = ["ALIGN", "plan_memory"]
