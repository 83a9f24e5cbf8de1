"""``ubnas export``: write an architecture (optionally with trained weights) as ONNX."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    parser = sub.add_parser(
        "export", help="export an architecture (and trained weights) to ONNX",
        description="Build the network of SPEC, load --weights from a `ubnas train` checkpoint, export it "
                    "in eval mode with a dynamic batch dimension, and check it with onnxruntime if installed.")
    parser.add_argument("spec", metavar="SPEC", help="architecture YAML written by the search")
    parser.add_argument("--weights", metavar="CKPT", help="checkpoint.pt of `ubnas train` on this SPEC")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default 18)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    return parser


def run(args) -> int:
    from ubnas.export import export_onnx
    from ubnas.train import CHECKPOINT
    result = export_onnx(args.spec, args.onnx, weights=args.weights, check=not args.no_check,
                         opset=args.opset)
    weights = f"weights {result['weights']}" if result["weights"] else "random weights (no --weights)"
    if result["checked"]:
        check = f"onnxruntime max abs diff {result['max_abs_diff']:.2e} (tolerance {result['tolerance']:g})"
    elif args.no_check:
        check = "not checked (--no-check)"
    else:
        check = "not checked (onnxruntime not installed)"
    print(f"wrote {result['onnx']} ({weights}); {check}")
    # a network whose outputs barely move would pass the check even if its body were computed wrongly
    if result["checked"] and result["input_spread"] <= 10 * result["tolerance"]:
        print(f"note: the outputs hardly change with the input (by {result['input_spread']:.2g} across the check's "
              f"batch, under 10x the tolerance; an untrained network's batch-norm statistics can shrink the "
              f"activations cell by cell), so the check shows little")
    done, planned = result["trained_epochs"] or (None, None)
    if isinstance(done, int) and isinstance(planned, int) and done < planned:   # a stopped run's weights
        weights = Path(args.weights)
        how = (f"`ubnas train {args.spec} --out {weights.parent} --resume` finishes it"
               if weights.name == CHECKPOINT else "--resume of the run directory that wrote it finishes it")
        print(f"note: {args.weights} holds epoch {done} of {planned} (training unfinished; {how})", file=sys.stderr)
    if not result["weights"]:   # a valid file of an untrained network: easy to deploy by mistake
        print("warning: the exported network is untrained; pass --weights RUN/checkpoint.pt of `ubnas train`",
              file=sys.stderr)
    return 0
