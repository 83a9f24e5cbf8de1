"""ONNX export of an architecture spec (``ubnas export``).

The network is built from the spec, given the weights of a ``ubnas train``
checkpoint if one is named (a checkpoint of another architecture is refused),
put in eval mode and exported with ``torch.onnx.export`` (the torch.export
based exporter, which needs ``onnxscript``: ``pip install ubnas[onnx]``),
with a dynamic batch dimension.  When onnxruntime is importable the file is
run once on a fixed random batch and compared with PyTorch's output.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from hwmodels.yamlio import durable_replace

from .build import build_network
from .runtime import check_output_file
from .spec import load_spec
from .train import load_weights

MIN_OPSET = 18   # torch.export's ONNX converter cannot write older opsets

TOLERANCE = 1e-4   # max abs difference per unit of the largest output (float32 rounding grows with it)
OPSET = 18


# a run directory's own files, which an --onnx typo must not replace
RUN_FILES = ("arch.yaml", "checkpoint.pt", "metrics.json", "config.yaml", "search_log.csv")


def export_onnx(spec_path, onnx_path, weights: Optional[str] = None, check: bool = True,
                opset: int = OPSET) -> Dict[str, Any]:
    """Write ``onnx_path``; returns what was done (and the max abs difference if checked).
    ``trained_epochs``: (epochs the checkpoint holds, epochs its run was set to), None without weights."""
    spec = load_spec(spec_path)
    model = build_network(spec)
    trained_epochs = None
    if weights:
        ckpt = load_weights(model, weights, spec)
        config = ckpt.get("config")
        trained_epochs = (ckpt.get("epoch"), config.get("epochs") if isinstance(config, dict) else None)
    model.eval()
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise ValueError("ONNX export needs the onnx extra: pip install 'ubnas[onnx]' "
                         "(onnx, onnxscript, onnxruntime)") from None
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:   # torch.export's ONNX converter writes opset 18 at the least
        raise ValueError(f"--opset {opset}: expected {MIN_OPSET}..{newest} (the exporter writes opset "
                         f"{MIN_OPSET} or newer; this onnx package knows up to {newest})")
    example = torch.randn((2,) + tuple(spec.input_shape), generator=torch.Generator().manual_seed(0))
    onnx_path = check_output_file(onnx_path, "--onnx")   # before the minutes of exporting
    for given, what in ((spec_path, "the SPEC"), (weights, "--weights")):   # it would replace its own input
        if given and Path(given).exists() and Path(given).resolve() == onnx_path.resolve():
            raise ValueError(f"--onnx {onnx_path}: is {what}; choose another file")
    if onnx_path.name in RUN_FILES and onnx_path.exists():
        raise ValueError(f"--onnx {onnx_path}: would replace a run's {onnx_path.name}; choose another file")
    keywords = inspect.signature(torch.onnx.export).parameters
    if "kwargs" not in keywords and not {"dynamo", "external_data"} <= set(keywords):   # torch < 2.6
        raise ValueError(f"ONNX export needs torch 2.6 or newer (its torch.export-based exporter); "
                         f"this is torch {torch.__version__}")
    tmp = onnx_path.with_name(f".{onnx_path.name}.tmp")
    batch = torch.export.Dim("batch", min=1)
    logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in logs]
    try:
        # the exporter prints its progress and logs/warns about its own internals (torchvision
        # ops it skips, deprecations, a failed opset conversion we report below): keep the CLI
        # to its one result line
        for log in logs:
            log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), opset_version=opset,
                                        dynamo=True, verbose=False, external_data=False)
            program.save(str(tmp))
        # the exporter reports a failed opset conversion and keeps its own opset: refuse that file
        written = next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                        if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise ValueError(f"--opset {opset}: torch's ONNX exporter could not convert this network "
                             f"to opset {opset} (it wrote {written}); try {OPSET}")
        result = _checked_against_torch(model, spec, tmp, check, onnx_path)   # a file that fails it is not kept
        result.update(onnx=str(onnx_path), weights=weights, opset=opset, trained_epochs=trained_epochs)
        durable_replace(tmp, onnx_path)
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
        if tmp.exists():
            tmp.unlink()
    return result


def _checked_against_torch(model, spec, onnx_file, check: bool, name) -> Dict[str, Any]:
    """Run ``onnx_file`` in onnxruntime (when installed and ``check``) on a seeded batch of 3 and
    compare with ``model``; ValueError when the max abs difference exceeds TOLERANCE times the
    largest output (at least 1).  ``input_spread``: how far the outputs move from one input to the
    next (max over outputs of max - min over the batch); near 0 the comparison shows little."""
    result: Dict[str, Any] = {"spec": str(spec.origin), "input_shape": ["batch", *spec.input_shape],
                              "checked": False}
    if not check:
        return result
    try:
        import onnxruntime
    except ImportError:
        return result
    x = torch.randn((3,) + tuple(spec.input_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    try:   # onnxruntime raises its own Exception subclasses (an opset newer than it knows: Fail)
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{name}: onnxruntime {onnxruntime.__version__} cannot run the exported file "
                         f"({type(exc).__name__}: {first}); not written. Try a lower --opset, a newer "
                         f"onnxruntime, or --no-check to write it unchecked") from None
    diff = float(abs(got - expected).max())
    tolerance = TOLERANCE * max(1.0, float(abs(expected).max()))
    spread = float((expected.max(axis=0) - expected.min(axis=0)).max())
    result.update(checked=True, max_abs_diff=diff, tolerance=tolerance, input_spread=spread)
    if not diff <= tolerance:
        raise ValueError(f"{name}: onnxruntime's output differs from PyTorch's by {diff:.3g} (max abs, tolerance "
                         f"{tolerance:.3g}); not written")
    return result
