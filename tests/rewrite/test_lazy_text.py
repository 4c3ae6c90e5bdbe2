"""Rewrite events and declines take their IR text when the rewrite happens and format it only when
read: a reason's arguments, a node's attributes and types are formatted by the reader, and what
it reads is the graph as it was, named as it was."""

from __future__ import annotations

import pytest

import rtinfer.ir.printer as printer
from rtinfer.ir.graph import Value
from rtinfer.ir.printer import Namer
from rtinfer.ir.types import DType, TensorType
from rtinfer.pass_manager import PassContext, get_pass
from rtinfer.rewrite import P, Rewriter, RuleSet, resolve

from .helpers import ir

x = P.var("x")

CHAIN = """
func @main(%a: f32[4]) -> f32[4] {
  %0 = neg(%a)
  %1 = neg(%0)
  %2 = neg(%1)
  return %2
}"""


class Counted:
    """A decline argument that counts how often it is formatted."""

    def __init__(self) -> None:
        self.formatted = 0

    def __format__(self, spec: str) -> str:
        self.formatted += 1
        return "f32[4]"


def test_a_decline_formats_its_reason_once_and_only_when_read():
    arg = Counted()
    ctx = PassContext(pass_name="p")
    RuleSet("r", [(P.op("neg", x), lambda rw, x: rw.decline("{} is {}", "x", arg))]).apply(
        ir(CHAIN), ctx)
    assert len(ctx.declines) == 3 and arg.formatted == 0
    assert [d.reason for d in ctx.declines] == ["x is f32[4]"] * 3
    assert ctx.declines[0].reason == "x is f32[4]" and arg.formatted == 3


def test_a_reason_may_be_a_callable_and_braces_without_arguments_stay():
    ctx = PassContext()
    RuleSet("r", [(P.op("neg", x, name="n"),
                   lambda rw, x, n: rw.decline(lambda: f"{n.op} declined"))]).apply(ir(CHAIN), ctx)
    RuleSet("s", [(P.op("neg", x), lambda rw, x: rw.decline("attrs {} kept"))]).apply(
        ir(CHAIN), ctx)
    assert {d.reason for d in ctx.declines} == {"neg declined", "attrs {} kept"}


def test_event_texts_are_formatted_when_read(monkeypatch):
    calls = []
    real = printer.format_attr
    monkeypatch.setattr(printer, "format_attr", lambda *a, **k: calls.append(a) or real(*a, **k))
    ctx = PassContext(pass_name="p")
    # neg(x) -> leaky_relu(x) {alpha=0.5}: the new nodes have an attribute to format
    RuleSet("r", [(P.op("neg", x), lambda rw, x: rw.op("leaky_relu", x, alpha=0.5))]).apply(
        ir(CHAIN), ctx)
    assert len(ctx.events) == 3 and not calls
    assert ctx.events[0].after == "%3 = leaky_relu(%a) {alpha=0.5} : f32[4]"
    assert calls


def test_texts_show_the_graph_as_it_was_in_any_reading_order():
    def run() -> list:
        ctx = PassContext(pass_name="p")
        RuleSet("r", [(P.op("neg", x), lambda rw, x: rw.op("relu", x))]).apply(ir(CHAIN), ctx)
        return ctx.events

    forward, backward = run(), run()
    texts = [(e.before, e.after) for e in forward]
    assert [(e.before, e.after) for e in reversed(backward)] == texts[::-1]
    # the last application saw %2's input already rewritten (one naming over the rule set)
    assert texts[0] == ("%0 = neg(%a) : f32[4]", "%3 = relu(%a) : f32[4]")
    assert texts[1] == ("%1 = neg(%3) : f32[4]", "%4 = relu(%3) : f32[4]")


def test_a_text_keeps_the_inputs_a_node_had():
    g = ir("""
    func @main(%a: f32[4], %b: f32[4]) -> f32[4] {
      %n = neg(%a)
      return %n
    }""")
    rw = Rewriter(g, pass_name="p")
    node = g.nodes[0]
    rw.begin(node, "swap")
    before, later = rw.before, rw.lazy_text(node)
    rw.set_input(node, 0, g.inputs[1])
    assert resolve(before) == str(later) == "%n = neg(%a) : f32[4]"
    assert rw.text(node) == "%n = neg(%b) : f32[4]"


def test_cse_names_the_kept_node_as_the_merged_one_was_named():
    # the second merge's root was %3; the kept %2 keeps its name, although %1 and %3 are gone
    ctx = get_pass("cse")(ir("""
    func @main(%a: f32[4]) -> f32[4] {
      %0 = neg(%a)
      %1 = neg(%a)
      %2 = relu(%0)
      %3 = relu(%1)
      %4 = add(%2, %3)
      return %4
    }"""))
    assert [(e.before, e.after) for e in ctx.events] == [
        ("%1 = neg(%a) : f32[4]", "%0 = neg(%a) : f32[4]"),
        ("%3 = relu(%0) : f32[4]", "%2 = relu(%0) : f32[4]")]


def test_a_tracked_namer_does_not_hand_a_freed_values_name_to_a_new_one():
    t = TensorType(DType.f32, (4,))
    namer = Namer(tracked=True)
    old = Value(t, name="old")
    namer.add(old)
    old_id = id(old)
    del old
    new = Value(t)  # CPython hands the freed memory to the next object of its size
    if id(new) != old_id:
        pytest.skip("the new value did not reuse the freed id")
    assert namer(new) == "%?" + str(new.uid)  # not "%old"
    assert namer.add(new) == "0" and namer(new) == "%0"
