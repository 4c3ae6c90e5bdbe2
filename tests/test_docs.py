"""The guides' code runs: every ```python block of docs/writing-a-pass.md, in order, in one
namespace (the guide's own asserts and tests are part of it)."""

import re
from pathlib import Path

from rtinfer.pass_manager import unregister_pass

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_writing_a_pass_guide_runs():
    blocks = python_blocks(DOCS / "writing-a-pass.md")
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "writing_a_pass_guide"}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/writing-a-pass.md[block {i}]", "exec"), namespace)
    finally:
        unregister_pass("fold-scale-into-linear")
    assert namespace["result"].stat("fold-scale-into-linear", "folded") == 1
