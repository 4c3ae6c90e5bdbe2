"""fuse-mha: the head split and merge around a scaled_dot_product_attention become one
``multi_head_attention`` over [..., S, H*D] activations.

    reshape(transpose(scaled_dot_product_attention(heads(q), heads(k), heads(v), mask?),
                      [.., L, H, Dv] <- [.., H, L, Dv]), [.., L, H*Dv])
      -> multi_head_attention(q, k, v, mask?) {num_heads=H, scale, causal}

    heads(x) = transpose(reshape(x, [.., S, H, D]), [.., H, S, D])     x: [.., S, H*D]

The layout is the standard one of every Hugging Face / torch.onnx attention: channel h * D + d
of the projections is dimension d of head h, and the merge puts it back in the same place. Run
after fuse-attention (which makes the SDPA core; for torch.onnx's ``k^T`` it already leaves
``transpose(k, [0, 2, 1, 3])``) and before merge-parallel-linears, whose ``split`` then feeds
the op directly.

A merge reshape to another shape (GPT-2's Conv1D goes straight to [B*S, H*Dv]) stays as a
reshape of the op's output. Declines (with the layout found): a head split that is not a
reshape of the last axis into (H, D) followed by swapping the head and sequence axes, q, k and
v split into different numbers of heads (grouped-query attention spells a repeat in between,
which does not match), a merge transpose that is not the inverse of the split's, the per-head
output used elsewhere too. The head-split
nodes stay when something else reads them (a returned KV cache); the op splits its own copy.
Numerics: unchanged (the op composes the SDPA reference). Stats: fused.
"""

from __future__ import annotations

from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.ir.types import dims_equal
from rtinfer.pass_manager import PassContext, graph_pass
from rtinfer.rewrite import P, Rewriter, Rule, RuleSet

# -- by example: split heads, attend, merge heads ------------------------------------------------


def _multi_head(masked: bool):
    def heads(x, name):
        # [.., S, H*D] -> [.., S, H, D] -> [.., H, S, D]
        return P.op("transpose", P.op("reshape", x, name=f"{name}_split"), name=f"{name}_heads")

    def attention(q, k, v, mask):
        core = P.op("scaled_dot_product_attention", heads(q, "q"), heads(k, "k"), heads(v, "v"),
                    *([mask] if masked else []), name="core")
        # [.., H, L, Dv] -> [.., L, H, Dv] -> [.., L, H*Dv]
        return P.op(("reshape", "flatten"), P.op("transpose", core, name="merge_t"),
                    name="merge")
    return P.trace(attention)


PATTERNS = {"masked": _multi_head(True), "unmasked": _multi_head(False)}

# -- the action ----------------------------------------------------------------------------------


def _swap_heads_perm(rank: int) -> tuple[int, ...]:
    """The permutation swapping axes -3 and -2 (heads and sequence) of a rank-``rank`` tensor."""
    return tuple(range(rank - 3)) + (rank - 2, rank - 3, rank - 1)


def _perm(node: Node) -> tuple[int, ...]:
    rank = node.inputs[0].type.rank
    return tuple(p % rank for p in node.attrs["perm"]) or tuple(reversed(range(rank)))


def _split_heads(name: str, split: Node, heads: Node) -> int | str:
    """The number of heads of a standard head split, or why it is not one."""
    x, y = split.inputs[0].type, split.out.type
    if (x.rank < 2 or y.rank != x.rank + 1 or
            any(not dims_equal(a, b) for a, b in zip(x.shape[:-1], y.shape[:-2], strict=True))):
        return f"{name}: reshape {x} -> {y} does not split the last axis into (heads, head dim)"
    if not isinstance(y.shape[-2], int):
        return f"{name}: the number of heads {y.shape[-2]} is not static"
    if _perm(heads) != _swap_heads_perm(y.rank):
        return (f"{name}: transpose {list(_perm(heads))} of {y} is not the [.., S, H, D] -> "
                f"[.., H, S, D] head split")
    return y.shape[-2]


def fuse(rw: Rewriter, q: Value, k: Value, v: Value, core: Node, merge_t: Node, merge: Node,
         mask: Value | None = None, **nodes: Node) -> Value | None:
    counts = [_split_heads(n, nodes[f"{n}_split"], nodes[f"{n}_heads"]) for n in "qkv"]
    reasons = [c for c in counts if isinstance(c, str)]
    if reasons:
        return rw.decline("; ".join(reasons))
    if len(set(counts)) > 1:
        return rw.decline("q, k and v have {} heads", ", ".join(map(str, counts)))
    h = counts[0]
    o = core.out.type
    if _perm(merge_t) != _swap_heads_perm(o.rank):
        return rw.decline("transpose {} of {} is not the [.., H, L, Dv] -> [.., L, H, Dv] head "
                          "merge", list(_perm(merge_t)), o)
    if len(core.out.users) > 1 or core.graph.is_output(core.out) or \
            len(merge_t.out.users) > 1 or core.graph.is_output(merge_t.out):
        return rw.decline("the per-head attention output is used elsewhere too")
    ins = [q, k, v] + ([mask] if mask is not None else [])
    out = rw.op("multi_head_attention", *ins, num_heads=h, **core.attrs)
    # [.., L, H, Dv] is contiguous after the transpose, so any reshape of it is a reshape of
    # [.., L, H*Dv]: GPT-2's Conv1D flattens straight to [B*S, H*Dv]
    y = merge.out.type
    if out.type.rank != y.rank or any(not dims_equal(a, b) for a, b in
                                      zip(out.type.shape, y.shape, strict=True)):
        out = rw.op("reshape", out, shape=y.shape)
    return out


RULES = RuleSet("fuse-mha", [
    # merge(sdpa(split(q), split(k), split(v) [, mask])) -> multi_head_attention(q, k, v [, mask])
    Rule(name, pattern, fuse) for name, pattern in PATTERNS.items()
])


@graph_pass("fuse-mha", summary="absorb the head split/merge reshapes and transposes around "
                                "scaled_dot_product_attention into one multi_head_attention op")
def fuse_mha(graph: Graph, ctx: PassContext) -> None:
    ctx.stat("fused", RULES.apply(graph, ctx))
