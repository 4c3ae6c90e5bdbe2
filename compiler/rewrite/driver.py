"""Rules and the greedy rule driver.

A rule is a pattern and an action. ``RuleSet.apply`` visits the graph's nodes with a worklist,
matches each rule anchored at each node, and calls the action with the captures it names::

    RuleSet("canonicalize", [
        # x * 1 -> x
        (x * 1.0, lambda x: x),
        # relu(relu(x)) -> relu(x)
        (P.op("relu", P.op("relu", x, name="inner")), lambda inner: inner.out),
    ]).apply(graph, ctx)

The action returns the replacement of the root's output (a ``Value``; a list of values or a
``Node`` for multi-output roots), or None to leave the graph alone (after ``rw.decline(why)``
when it matched but refused). The driver then redirects the root's uses, erases what became
dead among the matched and newly created nodes, records a ``RewriteEvent`` and revisits the
nodes the change touched, until nothing matches.
"""

from __future__ import annotations

import inspect
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from rtinfer.errors import PassError
from rtinfer.ir.graph import Graph, Node, Value
from rtinfer.rewrite.events import RewriteEvent, RewriteLog, Text
from rtinfer.rewrite.pattern import (
    Capture,
    Match,
    OpPattern,
    capture_names,
    check_pattern,
    explain_mismatch,
    match_node,
)
from rtinfer.rewrite.rewriter import Rewriter

ActionResult = Value | Sequence[Value] | Node | None
Action = Callable[..., ActionResult]


@dataclass
class Rule:
    """``pattern`` (an op pattern, matched at its top op) and ``action``.

    The action is called with the captures its parameters name (``**kwargs`` takes them all),
    preceded by the ``Rewriter`` if its first parameter is named ``rw``.
    """

    name: str
    pattern: OpPattern
    action: Action
    _wants_rw: bool = field(init=False, repr=False)
    _params: frozenset[str] | None = field(init=False, repr=False)  # None: takes all captures

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, OpPattern):
            raise TypeError(f"rule {self.name}: the pattern must be an op pattern, "
                            f"got {self.pattern}")
        params = list(inspect.signature(self.action).parameters.values())
        self._wants_rw = bool(params) and params[0].name == "rw"
        if self._wants_rw:
            params = params[1:]
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        self._params = None if takes_all else frozenset(p.name for p in named)
        caps = capture_names(self.pattern)
        missing = [p.name for p in named if p.default is p.empty and p.name not in caps]
        if missing:
            raise TypeError(f"rule {self.name}: action parameter(s) {', '.join(missing)} are not "
                            f"captured by the pattern (captures: {', '.join(sorted(caps)) or '-'})")
        check_pattern(self.pattern, f"rule {self.name}")

    def call(self, rw: Rewriter, captures: dict[str, Capture]) -> ActionResult:
        kwargs = (captures if self._params is None
                  else {k: v for k, v in captures.items() if k in self._params})
        return self.action(rw, **kwargs) if self._wants_rw else self.action(**kwargs)


RuleLike = Rule | tuple[OpPattern, Action]


def _as_rule(r: RuleLike) -> Rule:
    if isinstance(r, Rule):
        return r
    if not (isinstance(r, tuple) and len(r) == 2):
        raise TypeError(f"a rule is a Rule or a (pattern, action) tuple, got {r!r}")
    pattern, action = r
    name = getattr(action, "__name__", "<rule>")
    if name == "<lambda>":
        name = str(pattern)  # lambdas are named by what they match
    return Rule(name, pattern, action)


class RuleSet:
    """Rules applied greedily to a fixpoint. ``max_applications``: the bound past which
    ``apply`` gives up with ``PassError`` (default ``10 * len(graph.nodes) + 1000``)."""

    def __init__(self, name: str, rules: Iterable[RuleLike], max_applications: int | None = None):
        self.name = name
        self.rules = [_as_rule(r) for r in rules]
        self.max_applications = max_applications
        self._by_op: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in sorted(rule.pattern.ops):
                self._by_op.setdefault(op, []).append(rule)

    def __repr__(self) -> str:
        return f"<RuleSet {self.name}: {', '.join(r.name for r in self.rules)}>"

    def apply(self, graph: Graph, ctx: RewriteLog | None = None) -> int:
        """Rewrite ``graph`` until no rule applies; return the number of applications.

        Stops early, without error, when ``ctx``'s rewrite budget runs out.
        """
        if ctx is None:
            ctx = RewriteLog(pass_name=self.name)
        pass_name = ctx.pass_name if ctx.pass_name != "<none>" else self.name
        rw = Rewriter(graph, ctx, pass_name)
        limit = self.max_applications or 10 * len(graph.nodes) + 1000
        recent: deque[str] = deque(maxlen=100)
        queue = deque(graph.nodes)
        queued = {id(n) for n in queue}
        count = 0
        while queue:
            node = queue.popleft()
            queued.discard(id(node))
            if node.graph is not graph:
                continue
            for rule in self._by_op.get(node.op, ()):
                if not ctx.allow_rewrite():
                    return count
                m = match_node(rule.pattern, node)
                if m is None:
                    if rule.name in ctx.expects:
                        miss = explain_mismatch(rule.pattern, node, rw.value_text)
                        best = ctx.near_misses.get(rule.name)
                        if best is None or miss.depth > best.depth:
                            miss.node = rw.text(node)
                            ctx.record_near_miss(rule.name, miss)
                    continue
                ctx.matches[rule.name] += 1
                applied = _apply(rule, m, rw)
                # Only a change can enable new matches: a declined attempt revisits nothing.
                revisit = rw.touched + [node] if applied else []
                rw.touched = []
                for n in revisit:
                    if id(n) not in queued and n.graph is graph:
                        queue.append(n)
                        queued.add(id(n))
                if applied:
                    count += 1
                    recent.append(rule.name)
                    if count >= limit:
                        firing = ", ".join(f"{r} ({k} of the last {len(recent)})"
                                           for r, k in Counter(recent).most_common())
                        raise PassError(
                            f"rule set {self.name!r} did not converge: {count} applications on "
                            f"a graph of {len(graph.nodes)} nodes; rules that kept firing: "
                            f"{firing}")
                    break
        return count


def _apply(rule: Rule, m: Match, rw: Rewriter) -> bool:
    """Run ``rule``'s action on match ``m``; True if the graph changed."""
    root = m.root
    rw.begin(root, rule.name, m.nodes)
    result = rule.call(rw, m.captures)

    if result is None:
        if not rw.edited:
            _erase_dead(rw, rw.created)
            return False
        new: list[Value] = []
    else:
        if isinstance(result, Node):
            new = list(result.outputs)
        elif isinstance(result, Value):
            new = [result]
        elif isinstance(result, (list, tuple)) and all(isinstance(v, Value) for v in result):
            new = list(result)
        else:
            raise PassError(f"{rw.pass_name}/{rule.name}: the action returned {result!r}; "
                            f"expected a Value, a list of Values, a Node or None")
        if len(new) != len(root.outputs):
            raise PassError(f"{rw.pass_name}/{rule.name}: the action returned {len(new)} "
                            f"value(s) for a root with {len(root.outputs)} output(s)")
        bad = [(o, v) for o, v in zip(root.outputs, new, strict=True)
               if o is not v and o.type != v.type]
        if bad:
            if rw.edited:
                o, v = bad[0]
                raise PassError(f"{rw.pass_name}/{rule.name}: replacement of type {v.type} for "
                                f"a value of type {o.type}")
            _erase_dead(rw, rw.created)
            o, v = bad[0]
            rw.decline("replacement type {} differs from the matched type {}", v.type, o.type)
            return False
        if all(o is v for o, v in zip(root.outputs, new, strict=True)) and not rw.edited:
            _erase_dead(rw, rw.created)
            return False
        for o, v in zip(root.outputs, new, strict=True):
            rw.replace(o, v)

    before = rw.before
    created = list(rw.created)
    _erase_dead(rw, list(m.nodes) + created)
    after: Text
    if any(n.graph is rw.graph for n in created):
        after = rw.lazy_texts(created)
    else:  # nothing new survived: the root's uses now read existing values
        after = ", ".join(f"{rw.value_text(o)} -> {rw.value_text(v)}"
                          for o, v in zip(root.outputs, new, strict=True) if o is not v)
        after = after or "(edited in place)"
    ctx = rw.ctx
    index = sum(ctx.applications.values())
    ctx.record_rewrite(RewriteEvent(rw.pass_name, rule.name, before, after, index))
    return True


def _erase_dead(rw: Rewriter, candidates: list[Node]) -> None:
    """Erase the nodes among ``candidates`` whose outputs are unused, users first."""
    for n in reversed(rw.ordered(candidates)):
        rw.erase_if_dead(n)
