"""A fuzzer over saved artifacts (issue 16, item 7): mutated manifest fields, manifest text and
file bytes (with the manifest's checksums left stale or updated to match, so the parser and the
weights reader see the mutation too). Loading, and calling what loads, gives the right answer or
an rtinfer error, never another exception and never a hang.

Bounded by time: ``$RTINFER_FUZZ_SECONDS`` (default 5 s) in the default run; the ``slow`` test
runs 120 s (or that variable) from another seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import rtinfer
from rtinfer.errors import RtinferError

SECONDS_ENV = "RTINFER_FUZZ_SECONDS"
X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[dict[str, bytes], torch.Tensor]:
    """A small artifact's files and the eager output they must reproduce."""
    cm = rtinfer.compile(_model(), example_inputs=(X,), backend="torch", cache=False)
    out = cm.save(tmp_path_factory.mktemp("fuzz") / "model")
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        return files, _model()(X)


# values a careless or hostile writer might put anywhere
def _odd_values(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, 0, -1, 1, 2**63, -(2**63), 10**400, 1.5, float("inf"), "", "x" * 3,
        "tensor", "out", "literal", "\u0000", "../../etc/passwd", [], {}, [None], {"": {}},
        [["out", 0]], ["out", 0], [1, [2, [3]]], rng.randrange(-5, 50), "a" * 5000,
    ])


def _paths(doc: Any, at: tuple = ()) -> Iterator[tuple]:
    yield at
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*at, i))


def _mutate_json(doc: dict, rng: random.Random) -> tuple[dict, str]:
    doc = copy.deepcopy(doc)
    at = rng.choice([p for p in _paths(doc) if p])
    parent = doc
    for key in at[:-1]:
        parent = parent[key]
    action = rng.choice(["replace", "replace", "delete", "wrap", "deep"])
    if action == "delete":
        del parent[at[-1]]
    elif action == "wrap":
        parent[at[-1]] = [parent[at[-1]]]
    elif action == "deep":  # spliced in as text: json.dumps itself recurses
        parent[at[-1]] = f"@deep{rng.choice([50, 5000])}@"
    else:
        parent[at[-1]] = _odd_values(rng)
    return doc, f"manifest {action} {'/'.join(map(str, at))}"


def _mutate_bytes(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(blob)
    action = rng.choice(["flip", "flip", "truncate", "append", "zero", "splice"])
    if action == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif action == "truncate":
        del b[rng.randrange(len(b)):]
    elif action == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif action == "zero":
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 32)] = bytes(min(32, len(b) - i))
    else:  # a stretch of text from elsewhere in the file
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        k = rng.randrange(len(b))
        b[k:k] = b[i:j]
    return bytes(b), action


def _ir_text_mutation(text: str, rng: random.Random) -> tuple[str, str]:
    """Token-level edits of graph.ir: numbers made huge or negative, names and ops swapped."""
    tokens = text.split(" ")
    i = rng.randrange(len(tokens))
    tokens[i] = rng.choice(["99999999999999999999", "-1", "0", "f64[", "]", "%x", "@main",
                            "relu", "const", "{", "}", "dense<>", "1e999", "nan", ""])
    return " ".join(tokens), f"graph.ir token {i}"


def _case(files: dict[str, bytes], rng: random.Random) -> tuple[dict[str, bytes], str]:
    files = dict(files)
    manifest = json.loads(files["manifest.json"])
    kind = rng.choice(["manifest", "manifest", "manifest-text", "file", "file-resigned",
                       "ir-resigned"])
    if kind == "manifest":
        manifest, what = _mutate_json(manifest, rng)
        text = json.dumps(manifest)
        for depth in (50, 5000):
            text = text.replace(f'"@deep{depth}@"', "[" * depth + "0" + "]" * depth)
        files["manifest.json"] = text.encode()
        return files, what
    if kind == "manifest-text":
        files["manifest.json"], what = _mutate_bytes(files["manifest.json"], rng)
        return files, f"manifest.json bytes {what}"
    name = rng.choice(["graph.ir", "weights.npz"])
    if kind == "ir-resigned":
        name = "graph.ir"
        text, what = _ir_text_mutation(files[name].decode(), rng)
        files[name] = text.encode()
    else:
        files[name], what = _mutate_bytes(files[name], rng)
    if kind != "file":  # the checksums updated: the reader must catch it past them
        manifest["files"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(),
                                   "bytes": len(files[name])}
        files["manifest.json"] = json.dumps(manifest).encode()
    return files, f"{name} {what} ({kind})"


def _try(folder: Path, expected: torch.Tensor | None) -> str | None:
    """None when loading ``folder`` (and calling what loads) behaves; else what went wrong.
    ``expected``: the outputs it must give if it loads (None: a re-signed graph or weights
    file, a valid artifact of another model, may give any)."""
    try:
        loaded = rtinfer.load(folder)
        got = loaded(X)
    except RtinferError:
        return None
    except Exception as e:  # what the fuzzer hunts: anything but an rtinfer error
        return f"{type(e).__name__}: {str(e)[:200]}"
    out = got if isinstance(got, torch.Tensor) else None
    if expected is not None and out is not None and out.shape == expected.shape and \
            not torch.allclose(out, expected):
        # a mutation the checks let through changed the numbers
        return "loaded, but the outputs differ from the eager model's"
    return None


def fuzz(files: dict[str, bytes], expected: torch.Tensor, root: Path, seconds: float,
         seed: int) -> tuple[int, list[str]]:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    failures: list[str] = []
    n = 0
    while time.monotonic() < deadline or n < 20:
        mutated, what = _case(files, rng)
        want = None if "resigned" in what else expected
        folder = root / f"case{n}"
        folder.mkdir()
        for name, blob in mutated.items():
            (folder / name).write_bytes(blob)
        box: dict[str, str | None] = {}
        worker = threading.Thread(
            target=lambda box=box, folder=folder, want=want: box.update(r=_try(folder, want)),
            daemon=True)
        worker.start()
        worker.join(30)
        if worker.is_alive():
            failures.append(f"case {n} ({what}): no answer after 30 s (a hang)")
            break
        if box.get("r"):
            failures.append(f"case {n} ({what}): {box['r']}")
        shutil.rmtree(folder, ignore_errors=True)
        n += 1
    return n, failures


def test_mutated_artifacts_give_rtinfer_errors_only(saved, tmp_path):
    files, expected = saved
    n, failures = fuzz(files, expected, tmp_path, float(os.environ.get(SECONDS_ENV, 5)), seed=0)
    assert not failures, f"{len(failures)} of {n} mutated artifacts:\n" + "\n".join(failures)


@pytest.mark.slow
def test_mutated_artifacts_give_rtinfer_errors_only_long(saved, tmp_path):
    files, expected = saved
    n, failures = fuzz(files, expected, tmp_path, float(os.environ.get(SECONDS_ENV, 120)),
                       seed=int(time.time()))
    assert not failures, f"{len(failures)} of {n} mutated artifacts:\n" + "\n".join(failures)
