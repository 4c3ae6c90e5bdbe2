"""Named pipelines. Each name can stand in any pipeline string (``"O1,my-pass"``)."""

from rtinfer.pass_manager import register_pipeline

register_pipeline("O0", "", "no optimization")
register_pipeline("O1", "cse,dce", "cheap cleanups: merge duplicates, drop dead nodes")
