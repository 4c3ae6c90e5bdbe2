"""The ``rtinfer`` command line: an ``mlir-opt`` for rtinfer.

    rtinfer opt model.ir --pipeline "cse,dce" --verify-each --print-ir-after-change --stats
    rtinfer optimize model.onnx --out out/
    rtinfer passes

Every rtinfer error is printed as ``rtinfer: error: <message>`` (exit status 1; 2 for usage
errors), without a Python traceback unless ``--traceback`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rtinfer import demo, optimize_cmd
from rtinfer.errors import CLIError, ParseError, RtinferError
from rtinfer.frontends import load_graph


def _dims(text: str) -> dict[str, int]:
    """``B=2,S=16`` -> {"B": 2, "S": 16}."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected NAME=INT[,NAME=INT...], got {text!r}")
        out[name.strip()] = int(value)
    return out


def _cmd_opt(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from rtinfer.errors import VerifyError
    from rtinfer.ir.printer import print_graph
    from rtinfer.ir.verifier import verify
    from rtinfer.pass_manager import run_pipeline

    graph = load_graph(args.file)
    # As mlir-opt does, the parsed input is always verified: an ill-typed file is an error
    # whether or not --verify-each is given.
    try:
        verify(graph)
    except VerifyError as e:
        raise VerifyError(f"{args.file}: the input graph is invalid: {e}") from None
    numerics: bool | dict = False
    if args.check_numerics:
        numerics = {"rtol": args.rtol, "atol": args.atol, "seed": args.seed, "dims": args.dims}
    result = run_pipeline(
        graph, args.pipeline, verify_each=args.verify_each,
        print_ir_before=args.print_ir_before, print_ir_after=args.print_ir_after,
        print_ir_after_change=args.print_ir_after_change, timing=args.timing, stats=args.stats,
        check_numerics=numerics, check_requires=not args.no_check_requires,
        full_constants=args.full_constants, out=stderr,
        expect=[r.strip() for r in args.expect.split(",") if r.strip()])
    # A file is written to be read back and run: constants in full unless asked otherwise.
    # On a terminal, large constants are elided for reading.
    full = args.full_constants or (bool(args.output) and not args.elide_constants)
    text = print_graph(result.graph, full_constants=full, provenance=args.provenance)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise CLIError(f"cannot write {args.output}: {e}") from None
    else:
        stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_bisect(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from rtinfer.bisector import bisect
    from rtinfer.errors import VerifyError
    from rtinfer.ir.verifier import verify

    graph = load_graph(args.file)
    try:
        verify(graph)
    except VerifyError as e:
        raise VerifyError(f"{args.file}: the input graph is invalid: {e}") from None
    result = bisect(graph, args.pipeline, rtol=args.rtol, atol=args.atol, seed=args.seed,
                    dims=args.dims, check_requires=not args.no_check_requires,
                    log=lambda line: stderr.write(line + "\n"))
    stdout.write(result.text())
    return 1 if result.diverged else 0


def format_passes() -> str:
    from rtinfer.pass_manager import list_passes, list_pipelines

    lines = ["passes:"]
    for p in list_passes():
        lines.append(f"  {p.name} (v{p.version})  {p.summary}")
        if p.requires:
            lines.append(f"      requires: {', '.join(p.requires)}")
        for name, opt in p.options.items():
            lines.append(f"      {name}: {opt.type_name} = {opt.format(opt.default)}"
                         + (f"  {opt.help}" if opt.help else ""))
    lines.append("")
    lines.append("pipelines:")
    for np_ in list_pipelines():
        body = np_.pipeline or "(no passes)"
        lines.append(f"  {np_.name} = {body}" + (f"  -- {np_.summary}" if np_.summary else ""))
    return "\n".join(lines) + "\n"


def _cmd_passes(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    stdout.write(format_passes())
    return 0


def _cmd_serve(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from rtinfer.serving.deploy import serve_main

    return serve_main(args.artifact, replicas=args.replicas, host=args.host, port=args.port,
                      max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                      address=args.address, stdout=stdout)


def _add_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load", action="append", default=[], metavar="PLUGIN.py",
                   help="load passes from a Python file (repeatable), as mlir-opt's "
                        "--load-pass-plugin; installed plugins (entry points "
                        "'rtinfer.passes') load by themselves")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtinfer", description="rtinfer: a graph compiler for real-time DL inference")
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of errors (for debugging rtinfer)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    opt = sub.add_parser("opt", help="run a pass pipeline on an IR file and print the result",
                         description="Run a pass pipeline on an IR file. The result goes to "
                                     "stdout (or -o); instrument output goes to stderr.")
    opt.add_argument("file", metavar="FILE.ir", help="IR text file ('-': standard input)")
    opt.add_argument("-p", "--pipeline", default="",
                     help='passes and named pipelines, e.g. "cse,dce" or "O1" (default: none)')
    opt.add_argument("-o", "--output", metavar="OUT", help="write the IR here, not stdout")
    opt.add_argument("--verify-each", action="store_true",
                     help="verify the graph before the pipeline and after every pass")
    opt.add_argument("--print-ir-before", action="store_true", help="print IR before each pass")
    opt.add_argument("--print-ir-after", action="store_true", help="print IR after each pass")
    opt.add_argument("--print-ir-after-change", action="store_true",
                     help="print IR after each pass that changed it")
    opt.add_argument("--timing", action="store_true", help="print per-pass wall times")
    opt.add_argument("--stats", action="store_true",
                     help="print per-pass statistics, rule applications and declines")
    opt.add_argument("--check-numerics", action="store_true",
                     help="interpret the graph on seeded random inputs after every pass and "
                          "stop at the first pass that changes the outputs")
    opt.add_argument("--rtol", type=float, default=1e-4, help="check-numerics rtol (1e-4)")
    opt.add_argument("--atol", type=float, default=1e-5, help="check-numerics atol (1e-5)")
    opt.add_argument("--seed", type=int, default=0, help="check-numerics input seed (0)")
    opt.add_argument("--dims", type=_dims, default=None, metavar="B=2,S=16",
                     help="sizes of symbolic dims for check-numerics inputs")
    opt.add_argument("--no-check-requires", action="store_true",
                     help="allow passes whose required passes did not run earlier")
    opt.add_argument("--full-constants", action="store_true",
                     help="print constant data in full instead of eliding large tensors "
                          "(the default with -o)")
    opt.add_argument("--elide-constants", action="store_true",
                     help="with -o, elide large constants too (the file cannot be run)")
    opt.add_argument("--provenance", action="store_true",
                     help="print where each node came from")
    opt.add_argument("--expect", default="", metavar="RULE[,RULE]",
                     help="rules (rule or pass/rule) expected to apply: --stats explains the "
                          "ones that did not (closest near miss or decline)")
    _add_load(opt)
    opt.set_defaults(run=_cmd_opt)

    bis = sub.add_parser(
        "bisect", help="find the pass and the rule application that change a model's outputs",
        description="Run the pipeline pass by pass on the reference interpreter; name the first "
                    "pass whose outputs diverge from the unoptimized model's, then the first "
                    "rule application in it (binary search over the rewrite budget), and print "
                    "that rewrite's IR before and after. Exit status 0: nothing diverges; 1: a "
                    "divergence was found (or an error).")
    bis.add_argument("file", metavar="MODEL", help="IR text file or .onnx model")
    bis.add_argument("-p", "--pipeline", required=True, help='e.g. "O3" or "cse,my-pass"')
    bis.add_argument("--rtol", type=float, default=1e-4, help="rtol (1e-4)")
    bis.add_argument("--atol", type=float, default=1e-5, help="atol (1e-5)")
    bis.add_argument("--seed", type=int, default=0, help="input seed (0)")
    bis.add_argument("--dims", type=_dims, default=None, metavar="B=2,S=16",
                     help="sizes of symbolic dims for the inputs")
    bis.add_argument("--no-check-requires", action="store_true",
                     help="allow passes whose required passes did not run earlier")
    _add_load(bis)
    bis.set_defaults(run=_cmd_bisect)

    optz = sub.add_parser(
        "optimize", help="compile a model and measure it before and after",
        description="Capture, optimize and build MODEL, then measure latency (p50/p90) before "
                    "(eager torch, ONNX Runtime for an .onnx file) and after, the speedup, the "
                    "model size and the output fidelity; write DIR/artifact/, DIR/report.md "
                    "and DIR/report.json.")
    optimize_cmd.add_arguments(optz, _dims)
    _add_load(optz)
    optz.set_defaults(run=optimize_cmd.run)

    passes = sub.add_parser(
        "passes", help="list the passes and named pipelines",
        description="List every registered pass (name, version, one-line summary, required "
                    "passes, typed options with defaults) and every named pipeline (O0..O3 "
                    "and those plugins add), with the passes of installed plugins (entry "
                    "points 'rtinfer.passes') and of --load files.")
    _add_load(passes)
    passes.set_defaults(run=_cmd_passes)

    d = sub.add_parser("demo", help="optimize a built-in example and show what happened")
    demo.add_arguments(d)
    d.set_defaults(run=lambda args, stdout, stderr: demo.main(args))

    srv = sub.add_parser(
        "serve", help="serve a saved compiled model over HTTP with Ray Serve",
        description="Load ARTIFACT_DIR (CompiledModel.save) in each Ray Serve replica and answer "
                    'POST / {"inputs": [...]} with {"outputs": [...]}, batching concurrent '
                    "requests (docs/serving.md). Starts Ray locally unless --address is given.")
    srv.add_argument("artifact", metavar="ARTIFACT_DIR", help="a saved compiled model")
    srv.add_argument("--replicas", type=int, default=2, help="replicas (2)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port (8000)")
    srv.add_argument("--max-batch-size", type=int, default=16, help="largest batch (16)")
    srv.add_argument("--max-wait-ms", type=float, default=2.0,
                     help="how long the oldest request waits for a batch to fill (2.0)")
    srv.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto)")
    srv.set_defaults(run=_cmd_serve)
    return parser


def _message(e: RtinferError) -> str:
    if isinstance(e, ParseError):  # "file:3:5: error: msg" -> "file:3:5: msg" after our prefix
        return str(e).replace(": error: ", ": ", 1)
    return str(e)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        if getattr(args, "load", None):
            from rtinfer.pass_manager import load_pass_plugin

            for path in args.load:
                load_pass_plugin(path)
        return args.run(args, sys.stdout, sys.stderr)
    except RtinferError as e:
        if args.traceback:
            raise
        cause = e.__cause__
        hint = ""
        if cause is not None and not isinstance(cause, RtinferError):
            hint = "\n(an internal error; rerun with --traceback for details)"
        sys.stderr.write(f"rtinfer: error: {_message(e)}{hint}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("rtinfer: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
