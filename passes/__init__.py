"""rtinfer's passes, one file each. Every built-in pass module is imported here, and nowhere
else registers passes: importing this package is what makes them known. The registry imports it
on its first lookup."""

from rtinfer.passes import cse, dce, pipelines

__all__ = ["cse", "dce", "pipelines"]
