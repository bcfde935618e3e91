"""Where a backend's integers first leave the PyTorch integer reference's, and at which stage.

verify calls `locate` on the first input where a backend differs. It takes the first
differing output element (NCHW order), and compares there the backend's own intermediate
values, when its runner offers `run.probe(x)`, with the reference's. Probe names:

ThresholdConvSpec (encoder, forward transform), per stage i:
    "stage{i}.accumulator"  (1, C, h, w) the exact sums  a = sum W * x
  equal accumulators but unequal outputs: the threshold count differs; the thresholds
  whose decision changed are T[c, j] for j between the two counts.
TableMixSpec (inverse transform):
    "table"        (1, terms, H, W, 3) the entry each term (c, u, v) picked, bias excluded
    "accumulator"  (1, 3, H, W) bias + the sum of the terms (the mix)
  compared clamped to [0, 256 * 2^shift - 1] (outside it the output saturates either way);
  equal accumulators but unequal outputs: the final shift (floor / 2^shift, clamp) differs.

A runner without probes still gets the reference side (its accumulator and thresholds), as
does one whose probe run does not reproduce the difference (LiteRT's preserved tensors need
its delegates off, so a difference made inside XNNPACK shows only in the normal run).
"""
from __future__ import annotations

import numpy as np

from otterlite.integer_spec.types import TableMixSpec

UNKNOWN = "stage unknown (no intermediate values from this runtime)"


def first_difference(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[int, tuple[int, ...]] | None:
    """(output index, element index without the batch axis) of the first unequal integer."""
    for o, (r, g) in enumerate(zip(ref, got)):
        if r.shape != g.shape:
            return None
        bad = np.argwhere(r.astype(np.int64) != g.astype(np.int64))
        if len(bad):
            return o, tuple(int(i) for i in bad[0][1:])
    return None


def table_terms_at(spec: TableMixSpec, x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(terms, 3) int64: the entry tables[c, u, v, z[c, h + u - pad, w + v - pad]] of every term
    at output pixel (h, w) of x (1, 3, H, W); 0 for a tap outside the image."""
    c, k, p = spec.tables.shape[0], spec.kernel, spec.pad
    out = np.zeros((c * k * k, 3), np.int64)
    for j, (ci, u, v) in enumerate(np.ndindex(c, k, k)):
        y, xx = h + u - p, w + v - p
        if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
            out[j] = spec.tables[ci, u, v, int(x[0, ci, y, xx])]
    return out


def locate(spec, x: np.ndarray, ref: list[np.ndarray], got: list[np.ndarray], names: list[str], run,
           reference_probe) -> dict | None:
    """The divergence at the first unequal element as plain data (see the module docstring);
    `reference_probe(x)` gives the reference's probes, `run.probe` (if any) the backend's."""
    found = first_difference(ref, got)
    if found is None:
        return None
    o, element = found
    mine = reference_probe(x)
    theirs = run.probe(x) if hasattr(run, "probe") else None
    out = {"output": names[o], "element": list(element), "reference": int(ref[o][(0, *element)]),
           "backend": int(got[o][(0, *element)]), "probed": theirs is not None}
    if theirs is not None and not all(np.array_equal(a, b) for a, b in zip(theirs["outputs"], got)):
        theirs, out["probed"] = None, "its probe run does not reproduce the difference"
    if isinstance(spec, TableMixSpec):
        return {**out, **table_mix_stage(spec, x, element, mine, theirs)}
    return {**out, **threshold_stage(spec, o, element, mine, theirs, out["reference"], out["backend"])}


def threshold_stage(spec, o: int, element: tuple[int, ...], mine: dict, theirs: dict | None,
                    ref_value: int, got_value: int) -> dict:
    c, h, w = element
    stage = spec.stages[o]
    key = f"stage{o}.accumulator"
    a = int(mine[key][0, c, h, w])
    q_ref, q_got = ref_value - spec.base, got_value - spec.base
    low, high = sorted((q_ref, q_got))
    t = stage.thresholds[c]
    changed = [{"index": j, "value": int(t[j]), "accumulator_on_it": a == int(t[j])}
               for j in range(low, min(high, len(t)))]
    info = {"accumulator_reference": a, "thresholds": changed[:4]}
    if theirs is None:
        return {**info, "stage": UNKNOWN}
    a_got = int(theirs[key][0, c, h, w])
    if a_got != a:
        return {**info, "stage": "accumulator", "accumulator_backend": a_got}
    return {**info, "stage": "threshold count", "accumulator_backend": a_got}


def table_mix_stage(spec: TableMixSpec, x: np.ndarray, element: tuple[int, ...], mine: dict,
                    theirs: dict | None) -> dict:
    o, h, w = element
    top = 256 * 2 ** spec.shift - 1
    a = int(np.clip(mine["accumulator"][0, o, h, w], 0, top))
    info = {"accumulator_reference": a}
    if theirs is None:
        return {**info, "stage": UNKNOWN}
    terms = table_terms_at(spec, x, h, w)[:, o]
    picked = theirs["table"][0, :, h, w, o].astype(np.int64)
    wrong = np.nonzero(picked != terms)[0]
    if len(wrong):
        j = int(wrong[0])
        ci, u, v = np.unravel_index(j, spec.tables.shape[:3])
        y, xx = h + u - spec.pad, w + v - spec.pad
        code = int(x[0, ci, y, xx]) if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3] else None
        return {**info, "stage": "table", "term": [int(ci), int(u), int(v)], "code": code,
                "entry_reference": int(terms[j]), "entry_backend": int(picked[j])}
    a_got = int(np.clip(theirs["accumulator"][0, o, h, w], 0, top))
    if a_got != a:
        return {**info, "stage": "mix", "accumulator_backend": a_got}
    return {**info, "stage": "final shift", "accumulator_backend": a_got}


def describe(d: dict | None) -> str:
    """One line: where, at which stage, by how much."""
    if not d:
        return ""
    if "error" in d:
        return f"localisation failed: {d['error']}"
    where = f"{d['output']}[{', '.join(map(str, d['element']))}] {d['backend']} vs {d['reference']}"
    stage = d["stage"]
    if stage == "accumulator":
        delta = d["accumulator_backend"] - d["accumulator_reference"]
        return f"{where}: accumulator {d['accumulator_backend']} vs {d['accumulator_reference']} ({delta:+d})"
    if stage in ("mix", "final shift"):
        return f"{where}: {stage} (clamped accumulator {d['accumulator_backend']} vs {d['accumulator_reference']})"
    if stage == "table":
        c, u, v = d["term"]
        return (f"{where}: table entry of term (c={c}, u={u}, v={v}) at code {d['code']}: "
                f"{d['entry_backend']} vs {d['entry_reference']}")
    text = f"{where}: {stage}" + (f" ({d['probed']})" if isinstance(d.get("probed"), str) else "")
    if "thresholds" in d:
        text += f", accumulator {d['accumulator_reference']}"
        for t in d["thresholds"][:2]:
            text += f"; threshold {t['index']} (T={t['value']}" + (", accumulator exactly on it)" if
                                                                  t["accumulator_on_it"] else ")")
    return text
