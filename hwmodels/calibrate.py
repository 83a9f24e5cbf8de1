"""Fit an accelerator's ``Calibration`` to reference layer latencies (``hwmodels.references``).

* SCALE-Sim rows (``references.scalesim_rows``): SCALE-Sim 3.0.0 models one array, so
  the model is evaluated on one array (``num_arrays`` of the written YAML is kept).
  Only the compute side is free: cycle_scale, fold_overhead_cycles,
  layer_overhead_cycles; the prediction compared is compute + layer overhead (no
  memory bound: SCALE-Sim runs in CALC mode, where reads never stall).
* measured rows (``references.measured_rows``): the prediction is the full model
  (max(compute, memory) + layer overhead) and bandwidth_efficiency is free as well,
  bounded to (0, 1].

``calibrate`` fits the free parameters with ``scipy.optimize.least_squares`` on
log residuals log(predicted / reference) of a seeded training split (of the
distinct layers: a repeated layer is never both fitted and held out) and reports
nn-Meter's metrics (RMSE, RMSPE, mean and worst |error| %, share within +-5 % and
+-10 %) before and after on the held-out rows, which may instead be a different
suite or file.  ``write_calibrated`` writes the YAML (with ``fit_report`` and
``provenance``) and, with matplotlib, a PNG of predicted vs reference cycles.
Every user error is a ``HardwareConfigError`` (a ValueError) with one line.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .accelerator import Accelerator, Calibration, HardwareConfigError, save_accelerator
from .exact import MODES, above_peak, layer_cost, mode_arrays, mode_pes
from .layers import GemmLayer
from .references import ReferenceRow, ReferenceSet, layer_key, scalesim_version
from .yamlio import drawn_by_ubnas, durable_replace, png_metadata

COMPUTE_PARAMS = ("cycle_scale", "fold_overhead_cycles", "layer_overhead_cycles")
MEASURED_PARAMS = COMPUTE_PARAMS + ("bandwidth_efficiency",)
# Physical bounds: no speed-up beyond 10x or slow-down beyond 10x, overheads >= 0,
# bandwidth efficiency in (0, 1].
BOUNDS = {"cycle_scale": (0.1, 10.0), "fold_overhead_cycles": (0.0, 1.0e6),
          "layer_overhead_cycles": (0.0, 1.0e8), "bandwidth_efficiency": (1.0e-3, 1.0)}


# ----------------------------------------------------------------------------- model + fit
class _Model:
    """Vectorised model of ``rows`` on ``acc``: the parts of hwmodels.exact that do not
    depend on the calibration are computed once with a neutral Calibration.  As in
    hwmodels.exact, 'uboost' models one array (rounds = folds, utilization over R * C)
    and 'systolic' shares folds across num_arrays (utilization over all PEs)."""

    def __init__(self, rows: Sequence[ReferenceRow], acc: Accelerator, mode: str, with_memory: bool):
        neutral = acc.replace(calibration=Calibration())
        costs = [layer_cost(r.layer, neutral, mode) for r in rows]
        arrays = mode_arrays(acc, mode)
        self.base = np.array([c.compute_cycles for c in costs], dtype=float)      # rounds * fold cycles
        self.rounds = np.array([math.ceil(c.folds / arrays) for c in costs], dtype=float)
        self.memory = np.array([c.memory_cycles for c in costs], dtype=float)     # at efficiency 1
        self.macs = np.array([c.macs for c in costs], dtype=float)
        self.with_memory = with_memory and mode == "systolic"
        self.pes = mode_pes(acc, mode)

    def utilization(self, predicted: np.ndarray) -> np.ndarray:
        """MACs / (cycles * the PEs the mode counts), as hwmodels.exact reports it."""
        return self.macs / (np.asarray(predicted, float) * self.pes)

    def predict(self, cal: Calibration) -> np.ndarray:
        compute = cal.cycle_scale * (self.base + self.rounds * cal.fold_overhead_cycles)
        if self.with_memory:
            compute = np.maximum(compute, self.memory / cal.bandwidth_efficiency)
        return compute + cal.layer_overhead_cycles

    def log_jacobian(self, cal: Calibration, free: Sequence[str]) -> np.ndarray:
        """d log(predict) / d parameter, (rows, len(free)), in closed form: the model is linear in
        each parameter on either side of its max(), so the exact trade-offs ``undetermined`` looks
        for show as exactly dependent columns (finite differences blur them)."""
        compute = cal.cycle_scale * (self.base + self.rounds * cal.fold_overhead_cycles)
        memory_bound = np.zeros_like(compute, dtype=bool)
        if self.with_memory:   # np.maximum's choice: compute on a tie
            memory_bound = self.memory / cal.bandwidth_efficiency > compute
        on_compute = (~memory_bound).astype(float)
        columns = {"cycle_scale": on_compute * (self.base + self.rounds * cal.fold_overhead_cycles),
                   "fold_overhead_cycles": on_compute * cal.cycle_scale * self.rounds,
                   "layer_overhead_cycles": np.ones_like(compute),
                   "bandwidth_efficiency": memory_bound * -self.memory / cal.bandwidth_efficiency ** 2}
        return np.stack([columns[n] for n in free], axis=1) / self.predict(cal)[:, None]

    def flat_interval(self, cal: Calibration, name: str, bounds: Sequence[float]) -> Tuple[float, float]:
        """The values of ``name`` (the others as in ``cal``) around its value in ``cal`` over which
        no prediction changes (relative 1e-12): a point for a parameter the rows pin down, its
        whole range for one no row depends on, in between for one the rows bound from one side
        only (a bandwidth efficiency above which no layer is memory-bound)."""
        start = getattr(cal, name)
        at = self.predict(cal)

        def flat(value):
            return np.allclose(self.predict(dataclasses.replace(cal, **{name: float(value)})), at,
                               rtol=1e-12, atol=0.0)

        def edge(bound):
            if flat(bound):   # the predictions are piecewise linear: flat at the bound, flat all along
                return bound
            inside, outside = start, bound
            for _ in range(60):
                middle = 0.5 * (inside + outside)
                inside, outside = (middle, outside) if flat(middle) else (inside, middle)
            return inside
        return edge(bounds[0]), edge(bounds[1])


def _rms(values: np.ndarray) -> float:
    """Root mean square, scaled by the largest |value| first: squares of 1e200 cycles (an outlier
    row) overflowed to inf with a RuntimeWarning although their RMS is finite."""
    if not len(values):
        return float("nan")
    scale = float(np.max(np.abs(values)))
    if scale == 0.0 or not np.isfinite(scale):
        return scale
    return scale * float(np.sqrt(np.mean((values / scale) ** 2)))


def metrics(predicted: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """nn-Meter's metrics: RMSE (cycles), RMSPE %, mean/worst |error| %, share within 5/10 %."""
    predicted, reference = np.asarray(predicted, float), np.asarray(reference, float)
    rel = (predicted - reference) / reference
    return {"rows": int(len(reference)),
            "rmse_cycles": _rms(predicted - reference),
            "rmspe_pct": 100 * _rms(rel),
            "mean_abs_pct": float(100 * np.mean(np.abs(rel))),
            "max_abs_pct": float(100 * np.max(np.abs(rel))),
            "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10))}


@dataclass
class CalibrationResult:
    """A calibration fit (``calibrate``): the fitted accelerator and the one it started from, the
    fitted parameters, the train / hold-out reference rows and the error metrics before and after."""
    accelerator: Accelerator          # the input accelerator with the fitted calibration
    before: Accelerator
    mode: str
    free: Tuple[str, ...]
    train: List[ReferenceRow]
    holdout: List[ReferenceRow]
    metrics_before: Dict[str, float]
    metrics_after: Dict[str, float]
    train_after: Dict[str, float]
    holdout_predicted_before: np.ndarray
    holdout_predicted_after: np.ndarray
    provenance: Dict[str, object]
    fit_report: Dict[str, object]


def split_rows(rows: Sequence[ReferenceRow], fraction: float, seed: int):
    """(train, holdout): a seeded shuffle of the distinct layers (``references.layer_key``), ``fraction`` of
    them held out (at least one).  A layer that occurs several times (networks repeat layers)
    goes to one side with all its rows, so no held-out layer is also a training layer.  Rows keep
    their order on each side."""
    if not 0 < fraction < 1:
        raise HardwareConfigError(f"--holdout-fraction: expected a number in (0, 1), got {fraction!r}")
    groups: Dict[str, List[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(layer_key(row.layer), []).append(index)
    members = list(groups.values())
    order = np.random.default_rng(seed).permutation(len(members))
    n_hold = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
    hold = sorted(i for g in order[:n_hold] for i in members[g])
    train = sorted(i for g in order[n_hold:] for i in members[g])
    return [rows[i] for i in train], [rows[i] for i in hold]


def _calibration(base: Calibration, names: Sequence[str], values: Sequence[float]) -> Calibration:
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, values)})


def fit(rows: Sequence[ReferenceRow], acc: Accelerator, mode: str, free: Sequence[str],
        with_memory: bool):
    """Least-squares fit of ``free`` Calibration fields on log residuals; returns
    (Calibration, scipy result)."""
    from scipy.optimize import least_squares
    model = _Model(rows, acc, mode, with_memory)
    log_ref = np.log(np.array([r.cycles for r in rows]))
    lower = np.array([BOUNDS[n][0] for n in free])
    upper = np.array([BOUNDS[n][1] for n in free])

    def residuals(x):
        predicted = model.predict(_calibration(acc.calibration, free, x))
        return np.log(np.maximum(predicted, 1e-9)) - log_ref

    # A few starts (the given calibration and a small grid): the max() and the
    # scale/overhead trade-off make the surface non-convex in places.
    starts = [[getattr(acc.calibration, n) for n in free]]
    typical = float(np.median(model.base / np.maximum(model.rounds, 1)))
    for scale in (1.0, 1.5):
        for fold in (0.0, 0.5 * typical):
            for layer in (0.0, float(np.median([r.cycles for r in rows])) * 0.1):
                for eff in (1.0, 0.3):
                    guess = {"cycle_scale": scale, "fold_overhead_cycles": fold,
                             "layer_overhead_cycles": layer, "bandwidth_efficiency": eff}
                    starts.append([guess[n] for n in free])
    best = None
    seen = set()
    for start in starts:
        x0 = np.clip(np.array(start, float), lower, upper)
        if tuple(x0) in seen:
            continue
        seen.add(tuple(x0))
        result = least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac", method="trf",
                               xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        if best is None or result.cost < best.cost - 1e-15:
            best = result
    x = best.x.copy()   # snap values that sit on a bound up to solver noise onto it
    for i in range(len(x)):
        for bound in (lower[i], upper[i]):
            if abs(x[i] - bound) <= 1e-6 * max(1.0, abs(bound)):
                x[i] = bound
    return _calibration(acc.calibration, free, x), best


def calibrate(reference: ReferenceSet, acc: Accelerator, mode: str = "systolic",
              holdout: Optional[ReferenceSet] = None, holdout_fraction: float = 0.3, seed: int = 0,
              provenance: Optional[dict] = None) -> CalibrationResult:
    """Fit ``acc``'s calibration to ``reference`` and measure it on held-out rows.

    ``holdout`` (another suite or file) replaces the seeded split: then every
    reference row is used for the fit.
    """
    if mode not in MODES:
        raise HardwareConfigError(f"--model-mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if not reference.rows:
        extra = f" ({len(reference.skipped)} skipped as too long to simulate)" if reference.skipped else ""
        raise HardwareConfigError(f"{reference.source}: no reference rows{extra}")
    measured = reference.kind == "measured"
    free = MEASURED_PARAMS if measured else COMPUTE_PARAMS
    if mode == "uboost":   # the paper's model has no memory bound: nothing for the efficiency to act on
        free = COMPUTE_PARAMS
    model_acc = acc if measured else acc.replace(num_arrays=1)   # SCALE-Sim simulates one array
    overlap = 0
    distinct = len({layer_key(r.layer) for r in reference.rows})
    if holdout is not None:
        # a layer that is also fitted is not held out (e.g. --suite cifar --holdout-suite mixed)
        fitted = {layer_key(r.layer) for r in reference.rows}
        train = list(reference.rows)
        held = [r for r in holdout.rows if layer_key(r.layer) not in fitted]
        overlap = len(holdout.rows) - len(held)
        if not held:
            why = []
            if overlap:
                why.append(f"all {overlap} are layers of the training set {reference.source}")
            if holdout.skipped:   # as the reference's message: the simulations it left out
                why.append(f"{len(holdout.skipped)} skipped as too long to simulate")
            raise HardwareConfigError(f"{holdout.source}: no held-out rows" + (f" ({'; '.join(why)})" if why else ""))
    else:
        train, held = split_rows(reference.rows, holdout_fraction, seed)
    train_layers = len({layer_key(r.layer) for r in train})
    if train_layers < len(free) or not held:
        raise HardwareConfigError(
            f"{reference.source}: {len(train)} training row(s) of {train_layers} distinct layer(s) and "
            f"{len(held)} held-out row(s) for {len(free)} free parameters ({', '.join(free)}); need at least "
            f"{len(free)} distinct training layers (repeats of a layer add no information) and one "
            f"held-out row; " + (  # a split holds out one layer at least: no fraction helps below free + 1
                "give more layers" if holdout is not None or distinct < len(free) + 1 else
                                 "give more layers or a larger --holdout-fraction" if not held else
                                 "give more layers or a smaller --holdout-fraction"))
    fitted_cal, result = fit(train, model_acc, mode, free, with_memory=measured)
    hold_model = _Model(held, model_acc, mode, with_memory=measured)
    train_model = _Model(train, model_acc, mode, with_memory=measured)
    _, loose = undetermined(train_model.log_jacobian(fitted_cal, free), free,
                            [_at_bound(getattr(fitted_cal, n), BOUNDS[n]) for n in free])
    # A parameter over a range of which no training prediction changes is the given value, or the
    # nearest value in that range: not whichever start the solver came from.
    flat = {n: train_model.flat_interval(fitted_cal, n, BOUNDS[n]) for n in free if n not in loose}
    unused = [n for n, (lo, hi) in flat.items() if (lo, hi) == tuple(BOUNDS[n])]
    bounded = {n: [float(lo), float(hi)] for n, (lo, hi) in flat.items()
               if n not in unused and hi - lo > 1e-6 * max(1.0, abs(getattr(fitted_cal, n)))}
    fitted_cal = dataclasses.replace(fitted_cal, **{
        n: float(np.clip(getattr(acc.calibration, n), *flat[n])) for n in unused + list(bounded)})
    fitted_acc = acc.replace(calibration=fitted_cal)
    held_ref = np.array([r.cycles for r in held])
    train_ref = np.array([r.cycles for r in train])
    pred_before = hold_model.predict(acc.calibration)
    pred_after = hold_model.predict(fitted_cal)
    m_before, m_after = metrics(pred_before, held_ref), metrics(pred_after, held_ref)
    train_after = train_model.predict(fitted_cal)
    m_train = metrics(train_after, train_ref)
    utils = [(i, r.utilization) for i, r in enumerate(held) if r.utilization is not None]
    if utils:   # measured utilization: mean |error| in percentage points
        idx = np.array([i for i, _ in utils])
        ref_u = np.array([u for _, u in utils])
        for pred, target in ((pred_before, m_before), (pred_after, m_after)):
            util = hold_model.utilization(pred)[idx]
            target["utilization_mean_abs_pp"] = float(100 * np.mean(np.abs(util - ref_u)))
    parameters = {n: {"before": float(getattr(acc.calibration, n)), "after": float(getattr(fitted_cal, n)),
                      "bounds": list(BOUNDS[n])} for n in free}
    # against the uncalibrated model, as the unit warning says: a --hw already calibrated (cycle_scale
    # 10, say) would otherwise make a reference in the right unit look 10x off
    neutral = Calibration()
    reference_over_model = float(np.median(np.concatenate(
        [train_ref / train_model.predict(neutral), held_ref / hold_model.predict(neutral)])))
    fit_report = {
        "mode": mode, "free_parameters": list(free), "parameters": parameters,
        "n_train": len(train), "n_holdout": len(held),
        "holdout": (f"separate set ({overlap} of its rows left out: same layer as a training row)"
                    if overlap else "separate set") if holdout is not None
        else (f"seeded split {holdout_fraction:g} of {distinct} distinct layers (all rows of a layer on "
              f"one side: no held-out layer is a training layer)"),
        "before": m_before, "after": m_after, "train_after": m_train,
        "optimizer": {"success": bool(result.success), "cost": float(result.cost),
                      "nfev": int(result.nfev), "message": str(result.message)},
    }
    fit_report["unused_parameters"] = list(unused)
    fit_report["bounded_only"] = bounded
    fit_report["warnings"] = fit_warnings(fit_report, reference_over_model, loose)
    over_peak = sum(int(np.sum(above_peak(model.utilization(pred))))
                    for model, pred in ((train_model, train_after), (hold_model, pred_after)))
    if over_peak:   # fewer cycles than MACs / PEs: no array of this size can be that fast
        fit_report["warnings"].append(
            f"the fit puts {over_peak} of {len(train) + len(held)} rows above the array's peak (utilization "
            f"over 100 %: fewer cycles than MACs / {hold_model.pes} PEs); check the array size, clock and "
            f"unit of the reference")
    elif fitted_cal.cycle_scale < 1:   # these rows are fine: is a large layer, which keeps the array busier?
        big = GemmLayer("large", 1 << 16, 8 * acc.array_rows, 8 * acc.array_cols)
        busiest = layer_cost(big, fitted_acc.replace(
            calibration=dataclasses.replace(fitted_cal, bandwidth_efficiency=1.0)), mode).utilization
        if above_peak(busiest):
            fit_report["warnings"].append(
                f"cycle_scale {fitted_cal.cycle_scale:.4g} < 1 (faster than the model's folds) puts a large layer "
                f"(GEMM {big.m}/{big.k}/{big.n}) at {100 * busiest:.1f} % utilization, above the array's peak: "
                f"these rows are smaller than the layers it will cost; check the array size and clock, or add "
                f"large layers")
    for name, ref in (("reference", reference), ("holdout", holdout)):   # what the fit did not see
        if ref is not None and ref.skipped:
            fit_report[f"skipped_{name}_layers"] = list(ref.skipped)
    prov = {"reference": reference.kind, "reference_source": reference.source,
            "holdout_source": holdout.source if holdout is not None else reference.source,
            "seed": int(seed), "mode": mode, "array": f"{acc.array_rows}x{acc.array_cols}",
            "dataflow": acc.dataflow, "calibrated_from": acc.name,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if reference.kind == "scalesim":
        prov["scalesim"] = scalesim_version()
        prov["note"] = ("reference = SCALE-Sim compute cycles + 1 per simulated GEMM, one array; "
                        "fit on compute cycles only")
    prov.update(provenance or {})
    return CalibrationResult(fitted_acc, acc, mode, tuple(free), train, held, m_before, m_after, m_train,
                             pred_before, pred_after, prov, fit_report)


def _at_bound(value: float, bounds: Sequence[float]) -> bool:
    """Whether a fitted value sits on one of its bounds (``fit`` snaps solver noise onto them)."""
    return any(math.isclose(value, b, rel_tol=1e-6, abs_tol=1e-9) for b in bounds)


# Parameters pinned at these bounds mean the model cannot explain the rows (a wrong unit, outliers);
# no overhead (0) and full bandwidth efficiency (1) are ordinary fits.
ORDINARY_BOUNDS = {"fold_overhead_cycles": 0.0, "layer_overhead_cycles": 0.0, "bandwidth_efficiency": 1.0}


def undetermined(jac, free: Sequence[str], at_bound: Sequence[bool] = ()) -> Tuple[List[str], List[str]]:
    """The free parameters the rows cannot pin down, from the Jacobian (rows x free) at the fit:
    (unused: a zero column, no row depends on it; loose: in the null space of the column-normalised
    Jacobian, parameters that trade off exactly, e.g. fold and layer overheads when every layer has
    as many folds).  Parameters ``at_bound`` are left out of the second: a bound makes them unique."""
    jac = np.asarray(jac, float)
    norms = np.linalg.norm(jac, axis=0)
    if not norms.any():
        return list(free), []
    dead = norms <= 1e-9 * norms.max()
    unused = [n for n, d in zip(free, dead) if d]
    bounded = list(at_bound) + [False] * (len(free) - len(at_bound))
    live = [i for i, d in enumerate(dead) if not d and not bounded[i]]
    loose = []
    if len(live) > 1:
        # full V only when there are fewer rows than parameters (more null directions than sv shows);
        # full_matrices=True always would also build a rows x rows U: 1.5 GiB for 14,000 rows
        _, sv, vt = np.linalg.svd(jac[:, live] / norms[live], full_matrices=len(jac) < len(live))
        sv = np.concatenate([sv, np.zeros(len(vt) - len(sv))])   # fewer rows than parameters: more null
        null = vt[sv <= 1e-6 * sv[0]]   # every direction no row sees, not just the last (rank deficit >= 2)
        weight = np.linalg.norm(null, axis=0)   # how far each parameter moves along them
        loose = [free[i] for i, w in zip(live, weight) if w > 0.1]
    return unused, [n for n in free if n in loose]


def fit_warnings(fit_report: dict, reference_over_model: float, loose: Sequence[str]) -> List[str]:
    """What a user should check before using the fit: a reference far from the model's scale (a
    wrong unit), parameters at an artificial bound, undetermined parameters, a worse held-out error."""
    out = []
    before, after = fit_report["before"]["rmspe_pct"], fit_report["after"]["rmspe_pct"]
    if not 1 / 30 <= reference_over_model <= 30:
        out.append(f"the reference is a median {reference_over_model:.3g}x the uncalibrated model's cycles: "
                   f"check its unit (measured_seconds in seconds, measured_cycles in cycles of the "
                   f"accelerator's clock)")
    pinned = [n for n, v in fit_report["parameters"].items()
              if _at_bound(v["after"], v["bounds"])
              and not math.isclose(v["after"], ORDINARY_BOUNDS.get(n, math.nan), abs_tol=1e-9)]
    if pinned:
        out.append(f"at the bound of their range: {', '.join(pinned)} (the model cannot explain the rows "
                   f"within it)")
    if loose:
        out.append(f"these rows do not determine {', '.join(loose)} (they trade off exactly): the values "
                   f"written are one of many equally good fits; add varied layers")
    for name, (lo, hi) in (fit_report.get("bounded_only") or {}).items():
        values = fit_report["parameters"][name]
        if values["after"] == values["before"]:
            continue   # the given value fits as well as any: a note (format_report), not a warning
        out.append(f"these rows do not determine {name} within [{lo:.4g}, {hi:.4g}] (any value in it fits "
                   f"them equally): written {values['after']:.4g}, the nearest to the given "
                   f"{values['before']:.4g}; add layers that depend on it"
                   + (" (memory-bound ones)" if name == "bandwidth_efficiency" else ""))
    # differences under 0.005 points (rounding) are no worse
    if after > before + 5e-3:
        out.append(f"the fit made the held-out RMSPE worse ({before:.2f} % -> {after:.2f} %)")
    return out


# ----------------------------------------------------------------------------- output
def format_report(result: CalibrationResult) -> str:
    """The before/after table of held-out metrics and the parameters, as text."""
    mb, ma = result.metrics_before, result.metrics_after
    lines = [f"calibrated {result.before.name} ({result.before.array_rows}x{result.before.array_cols} "
             f"{result.before.dataflow}, model {result.mode}) on {result.fit_report['n_train']} rows; "
             f"held out {result.fit_report['n_holdout']} ({result.fit_report['holdout']})",
             f"{'held-out metric':<22}{'before':>14}{'after':>14}"]
    rows = [("RMSE (cycles)", "rmse_cycles", "{:,.1f}"), ("RMSPE %", "rmspe_pct", "{:.2f}"),
            ("mean |error| %", "mean_abs_pct", "{:.2f}"), ("worst |error| %", "max_abs_pct", "{:.2f}"),
            ("within +-5 %", "within_5pct", "{:.1%}"), ("within +-10 %", "within_10pct", "{:.1%}"),
            ("utilization |err| pp", "utilization_mean_abs_pp", "{:.2f}")]
    for label, key, fmt in rows:
        if key in mb:
            lines.append(f"{label:<22}{fmt.format(mb[key]):>14}{fmt.format(ma[key]):>14}")
    lines.append(f"{'parameter':<22}{'before':>14}{'after':>14}")
    for name, values in result.fit_report["parameters"].items():
        lines.append(f"{name:<22}{values['before']:>14.4g}{values['after']:>14.4g}")
    # the YAML is still written: the user decides
    for name in result.fit_report.get("unused_parameters") or []:
        why = " (no layer is memory-bound)" if name == "bandwidth_efficiency" else ""
        lines.append(f"note: no training row depends on {name}{why}: kept at {getattr(result.before.calibration, name):g}")
    for name, (lo, hi) in (result.fit_report.get("bounded_only") or {}).items():
        kept = result.fit_report["parameters"][name]
        if kept["after"] == kept["before"]:
            lines.append(f"note: any {name} in [{lo:.4g}, {hi:.4g}] fits the training rows equally: kept at "
                         f"{kept['before']:g}")
    warnings = result.fit_report.get("warnings") or []
    lines += [f"warning: {w}" for w in warnings]
    if any(not w.startswith("these rows do not determine") for w in warnings):
        lines.append("check the reference rows for outliers or a wrong unit before using this YAML")
    return "\n".join(lines) + "\n"


def render_plot(result: CalibrationResult) -> Optional[bytes]:
    """PNG bytes of predicted vs reference cycles (log-log, +-10 % band), before and
    after; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    reference = np.array([r.cycles for r in result.holdout])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    lo = float(min(reference.min(), result.holdout_predicted_before.min(),
                   result.holdout_predicted_after.min())) / 1.5
    hi = float(max(reference.max(), result.holdout_predicted_before.max(),
                   result.holdout_predicted_after.max())) * 1.5
    line = np.geomspace(lo, hi, 50)
    for ax, label, pred, m in ((axes[0], "before", result.holdout_predicted_before, result.metrics_before),
                               (axes[1], "after", result.holdout_predicted_after, result.metrics_after)):
        ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.2, label="±10 %")
        ax.plot(line, line, color="k", lw=0.8)
        ax.scatter(reference, pred, s=14, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"{label}: RMSPE {m['rmspe_pct']:.1f} %, within ±10 % {m['within_10pct']:.0%}")
        ax.set_xlabel(f"reference cycles ({result.provenance['reference']})")
        ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel(f"predicted cycles (model {result.mode})")
    axes[0].legend(loc="upper left")
    fig.suptitle(f"{result.before.name} {result.before.array_rows}x{result.before.array_cols} "
                 f"{result.before.dataflow}: {len(reference)} held-out layers")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata=png_metadata("calibrate"))
    plt.close(fig)
    return buffer.getvalue()


def check_plot_path(png_path: Path) -> None:
    """HardwareConfigError unless the fit's plot may be written to ``png_path``: a directory there,
    or a PNG that ubnas did not draw (``drawn_by_ubnas``: the user's), is refused."""
    if png_path.is_dir():
        raise HardwareConfigError(f"{png_path}: is a directory; the plot goes there (--no-plot, or another --out)")
    if png_path.exists() and not drawn_by_ubnas(png_path):
        raise HardwareConfigError(f"{png_path}: exists and is not a plot ubnas drew; the fit's plot would "
                                  f"replace it (move it away, or --no-plot, or another --out)")


def write_calibrated(result: CalibrationResult, path: Union[str, os.PathLike],
                     plot: bool = True) -> Optional[Path]:
    """Write the calibrated YAML (fit_report + provenance) and, with matplotlib, the PNG
    next to it (same stem).  Returns the PNG path or None.  Nothing is written when
    rendering fails; the YAML is written atomically.  Without a new plot (``plot`` False or
    no matplotlib) a plot an earlier fit drew at that place is removed: it no longer shows this
    YAML's fit.  A PNG there that ubnas did not draw (``drawn_by_ubnas``) is the user's: never
    removed, and a plot to write there is refused before anything is written."""
    path = Path(path)
    png = render_plot(result) if plot else None
    png_path = path.with_suffix(".png")
    if png is not None:   # found before the YAML is written, not after
        check_plot_path(png_path)
    ours = drawn_by_ubnas(png_path)
    extra = {"fit_report": _plain(result.fit_report), "provenance": _plain(result.provenance)}
    save_accelerator(result.accelerator, path, extra)
    if png is None:
        if ours:
            png_path.unlink()
        return None
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    tmp.write_bytes(png)
    durable_replace(tmp, png_path)
    return png_path


def _plain(value):
    """Convert numpy scalars / tuples into YAML-safe plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value
