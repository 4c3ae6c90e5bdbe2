"""Python side of rtinfer's native C++/CUDA kernels (registry, build/load, bindings).

This folder is the package ``rtinfer.kernels`` (pyproject's package-dir). When the repository
root is on ``sys.path`` (``python -c`` or ``python -m pytest`` run from a checkout), a plain
``import kernels`` would find this folder before Hugging Face's PyPI package ``kernels``, which
transformers imports. The name belongs to that package, so an import under the top-level name
hands over to it: the first ``kernels`` on ``sys.path`` outside this checkout.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError(
            "No module named 'kernels' (the folder kernels/ in this checkout is rtinfer.kernels; "
            "the top-level name is Hugging Face's package: pip install kernels)", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
