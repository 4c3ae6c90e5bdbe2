"""docs/serving.md's batcher example runs as written (the Ray Serve block needs a cluster and
is covered by test_ray_serve.py)."""

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def test_the_batcher_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    namespace: dict = {"__name__": "serving_guide"}
    exec(compile(blocks[0], "docs/serving.md[block 0]", "exec"), namespace)
    batcher = namespace["batcher"]
    assert batcher.closed and batcher.metrics()["completed"] == 1
