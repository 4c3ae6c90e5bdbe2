"""The pass manager: pass records, pipeline strings, instruments, ``run_pipeline``/``optimize``."""

from rtinfer.pass_manager.analysis import PipelineContext
from rtinfer.pass_manager.context import Decline, PassContext, RewriteEvent
from rtinfer.pass_manager.instruments import (
    Callback,
    CheckNumerics,
    Instrument,
    PassRecord,
    PipelineRun,
    PrintIR,
    Statistics,
    Timing,
    Verify,
    compare_outputs,
)
from rtinfer.pass_manager.pipeline import (
    PassInvocation,
    check_requirements,
    format_pipeline,
    invocation,
    parse_pipeline,
)
from rtinfer.pass_manager.plugins import load_entry_point_plugins, load_pass_plugin
from rtinfer.pass_manager.registry import (
    NamedPipeline,
    Option,
    Pass,
    get_pass,
    get_pipeline,
    graph_pass,
    install,
    list_passes,
    list_pipelines,
    register_pass,
    register_pipeline,
    unregister_pass,
)
from rtinfer.pass_manager.report import MatchReport, RuleReport
from rtinfer.pass_manager.runner import PipelineResult, optimize, run_pipeline

__all__ = [
    "Callback", "CheckNumerics", "Decline", "Instrument", "MatchReport", "NamedPipeline",
    "Option", "Pass", "PassContext", "PassInvocation", "PassRecord", "PipelineResult",
    "PipelineContext", "PipelineRun", "PrintIR", "RewriteEvent", "RuleReport", "Statistics",
    "Timing", "Verify",
    "check_requirements", "compare_outputs", "format_pipeline", "get_pass", "get_pipeline",
    "graph_pass", "install", "invocation", "list_passes", "list_pipelines",
    "load_entry_point_plugins", "load_pass_plugin", "optimize",
    "parse_pipeline", "register_pass", "register_pipeline", "run_pipeline", "unregister_pass",
]
