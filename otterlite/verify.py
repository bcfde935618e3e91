"""`otterlite verify DIR`: every artifact on every available backend, against the PyTorch
integer reference, over photos and a built-in adversarial set. Exact means zero
mismatching integers; there is no tolerance here."""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from otterlite import arm_env
from otterlite.backends import BACKENDS
from otterlite.divergence import describe, locate
from otterlite.errors import OtterliteError
from otterlite.export import fidelity_summary, input_size, read_manifest
from otterlite.images import load_rgb, psnr, sample_photo
from otterlite.integer_spec import load_spec
from otterlite.integer_spec.types import ENCODER_KINDS, TableMixSpec

DEFAULT_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
PROGRESS_S = 20  # a backend still running after this long says how far it is


@dataclass
class Result:
    model: str
    backend: str
    images: int = 0
    mismatches: int = 0
    max_lsb: int = 0
    first_difference: str | None = None
    status: str = "exact"  # exact | mismatch | not installed: ... | error: ...
    detail: str | None = None  # e.g. the TFLM arena bytes
    divergence: dict | None = None  # divergence.locate on the first differing input
    seconds: float = 0.0  # loading and running this backend on every input


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    fidelity: dict = field(default_factory=dict)  # per model: figures, target, pass, failures, source
    # with pictures=True, for reports.py (not in the JSON): per model its first photo, the
    # reference outputs and the float model's; per (model, backend) the first differing input
    samples: dict = field(default_factory=dict)
    mismatch_samples: dict = field(default_factory=dict)

    @property
    def faithful(self) -> bool:
        """Every model meets its fidelity target (a model whose fidelity is unknown does not)."""
        return all(f["pass"] for f in self.fidelity.values())

    @property
    def exact(self) -> bool:
        return all(r.status == "exact" or r.status.startswith("not installed") for r in self.results) and any(
            r.status == "exact" for r in self.results)


def fit(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop, or edge-pad, a photo to (1, 3, height, width)."""
    if rgb.shape[0] < height or rgb.shape[1] < width:
        rgb = np.pad(rgb, ((0, max(0, height - rgb.shape[0])), (0, max(0, width - rgb.shape[1])), (0, 0)), mode="edge")
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return np.ascontiguousarray(rgb[top:top + height, left:left + width].transpose(2, 0, 1))[None]


def hit_accumulator(w: np.ndarray, target: int) -> np.ndarray:
    """Greedy uint8 patch x with sum(w * x) as close to target as the weights allow."""
    x = np.full(w.size, 128, np.int64)
    flat = w.ravel().astype(np.int64)
    delta = target - int(flat @ x)
    for i in np.argsort(-np.abs(flat)):
        if flat[i] == 0 or delta == 0:
            continue
        new = int(np.clip(x[i] + round(delta / flat[i]), 0, 255))
        delta -= flat[i] * (new - x[i])
        x[i] = new
    return x.reshape(w.shape).astype(np.uint8)


BOUNDARY_FRAMES = 8  # at most this many boundary frames per stage whose windows overlap (WaLLoC)


def boundary_targets(stage) -> list[tuple[int, int]]:
    """(channel, accumulator) pairs, channel by channel: its two extremes, then T-1, T, T+1 of
    a spread of its thresholds."""
    lo, hi = stage.accumulator_range()
    targets = []
    for c in range(stage.weights.shape[0]):
        targets += [(c, int(hi[c])), (c, int(lo[c]))]
        finite = [t for t in stage.thresholds[c] if lo[c] < t <= hi[c]]
        targets += [(c, int(t) + d) for t in finite[:: max(1, len(finite) // 12)] for d in (-1, 0, 1)]
    return targets


def boundary_images(spec, height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """Per encoder stage: windows driving a channel's accumulator to its extremes and to T-1,
    T, T+1 of a spread of thresholds. Patch convs tile one frame with them; a wrap-around
    stage (kernel K > stride s) places them ceil(K / s) outputs apart, so no two windows share
    a pixel, over up to BOUNDARY_FRAMES frames. Pixels outside the windows are 128."""
    out = []
    for si, stage in enumerate(spec.stages):
        k, s = stage.weights.shape[-1], stage.stride
        if stage.border != "wrap" and (s != k or stage.pad):
            continue
        targets = boundary_targets(stage)
        spacing = -(-k // s)
        places = [(i, j) for i in range(0, height // s, spacing) for j in range(0, width // s, spacing)]
        frames = 1 if spacing == 1 else min(BOUNDARY_FRAMES, -(-len(targets) // len(places)))
        for f in range(frames):
            frame = np.full((3, height, width), 128, np.uint8)
            for q, (i, j) in enumerate(places):
                c, t = targets[(f * len(places) + q) % len(targets)]
                rows = np.arange(i * s - stage.pad, i * s - stage.pad + k) % height
                cols = np.arange(j * s - stage.pad, j * s - stage.pad + k) % width
                frame[:, rows[:, None], cols[None, :]] = hit_accumulator(stage.weights[c], t)
            out.append((f"boundaries-stage{si}" + (f"-{f}" if frames > 1 else ""), frame[None]))
    return out


def all_colours(height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """All 2^24 uint8 triples, in frames of height x width (the last one wraps around)."""
    codes = np.arange(2 ** 24, dtype=np.uint32)
    n = height * width
    frames = []
    for i in range(math.ceil(2 ** 24 / n)):
        chunk = np.take(codes, np.arange(i * n, (i + 1) * n), mode="wrap")
        rgb = np.stack([(chunk >> 16) & 255, (chunk >> 8) & 255, chunk & 255]).astype(np.uint8)
        frames.append((f"all-colours-{i}", rgb.reshape(1, 3, height, width)))
    return frames


def adversarial(spec, height: int, width: int) -> list[tuple[str, np.ndarray]]:
    shape = (1, 3, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(7)
    images = [
        ("zeros", np.zeros(shape, np.uint8)), ("full", np.full(shape, 255, np.uint8)),
        ("checker-1px", np.broadcast_to(((yy + xx) % 2 * 255).astype(np.uint8), shape).copy()),
        ("checker-8px", np.broadcast_to(((yy // 8 + xx // 8) % 2 * 255).astype(np.uint8), shape).copy()),
        ("ramp-x", np.broadcast_to((xx * 255 // max(1, width - 1)).astype(np.uint8), shape).copy()),
        ("ramp-y", np.broadcast_to((yy * 255 // max(1, height - 1)).astype(np.uint8), shape).copy()),
        ("noise", rng.integers(0, 256, shape, dtype=np.uint8)),
        ("noise-binary", (rng.integers(0, 2, shape) * 255).astype(np.uint8)),
    ]
    if isinstance(spec, TableMixSpec) or spec.kind == "seaotter-forward":
        return images + all_colours(height, width)
    return images + boundary_images(spec, height, width)


def compare(ref: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> tuple[int, int, str | None]:
    mismatches, max_lsb, first = 0, 0, None
    for name, r, g in zip(names, ref, got):
        if r.shape != g.shape:
            return r.size, 255, f"{name} (shape {g.shape} != {r.shape})"
        diff = np.abs(r.astype(np.int64) - g.astype(np.int64))
        bad = int((diff > 0).sum())
        if bad and first is None:
            first = name
        mismatches += bad
        max_lsb = max(max_lsb, int(diff.max()))
    return mismatches, max_lsb, first


def verify(folder: str | Path, images: list[str] | None = None, backends: list[str] | None = None,
           say=print, with_fidelity: bool = True, target=None, pictures: bool = False) -> Report:
    """Parity of every artifact on every backend, and (with_fidelity) each model's fidelity
    to its float model against `target` (integer_spec.fidelity.Target; default: its defaults);
    `pictures` keeps the samples an HTML report draws."""
    from otterlite.integer_spec.fidelity import Target

    target = target or Target()
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest["artifacts"]:
        raise OtterliteError(f"{folder}/manifest.json lists no artifacts; run 'otterlite export MODEL -o {folder}'")
    names = select_backends(backends)
    photos = [(Path(p).name, load_rgb(p)) for p in images] if images else [
        (n, load_rgb(sample_photo(n))) for n in DEFAULT_PHOTOS]
    for entry in manifest["artifacts"]:  # every file checked before minutes of work, not after
        artifact = folder / entry["file"]
        if not artifact.is_file():
            raise OtterliteError(f"{artifact}: listed in manifest.json but missing; re-run 'otterlite export'")
        if hashlib.sha256(artifact.read_bytes()).hexdigest() != entry["sha256"]:
            raise OtterliteError(f"{artifact}: sha256 differs from manifest.json: the file is corrupted "
                                 f"or was changed; re-run 'otterlite export'")
        if not (folder / entry["spec_file"]).is_file():
            raise OtterliteError(f"{folder / entry['spec_file']}: listed in manifest.json but missing; re-run "
                                 f"'otterlite export'")
    report = Report()
    references, spec_done = {}, set()
    for entry in manifest["artifacts"]:
        artifact = folder / entry["file"]
        spec_bytes = (folder / entry["spec_file"]).read_bytes()
        spec = load_spec(spec_bytes, entry["spec_file"])
        height, width = input_size(entry)
        key = (entry["spec_file"], height, width)
        if key not in references:  # one reference run per spec and size, shared by its formats
            inputs = [(n, fit(rgb, height, width)) for n, rgb in photos] + adversarial(spec, height, width)
            reference = BACKENDS["torch-int"].load(artifact, spec)
            references[key] = inputs, [reference(x) for _, x in inputs], reference.probe
        inputs, ref_outputs, reference_probe = references[key]
        say(f"{entry['model']} ({entry['format']}): {len(inputs)} inputs ({len(photos)} photos + adversarial set)")
        out_names = [o["name"] for o in entry["outputs"]]
        if pictures and entry["model"] not in report.samples:
            label, x = inputs[0]
            report.samples[entry["model"]] = {"label": label, "input": x, "outputs": ref_outputs[0], "names": out_names,
                                              **float_outputs(entry, x)}
        for b in names:
            backend = BACKENDS[b]
            result = Result(entry["model"], b)
            report.results.append(result)
            if backend.artifact not in ("spec", entry["format"]) or (backend.artifact == "spec" and key in spec_done):
                result.status = f"not applicable to {entry['format']}"
                continue
            if not backend.runs(entry["model"]):
                result.status = "not applicable"
                continue
            reason = backend.missing()
            if reason:
                result.status = f"not installed: {reason}"
                continue
            started = time.perf_counter()
            try:
                run = backend.load(artifact, spec)
                shown = time.perf_counter()
                for (label, x), ref in zip(inputs, ref_outputs):
                    if time.perf_counter() - shown > PROGRESS_S:
                        say(f"  {b}: {result.images}/{len(inputs)} inputs ...")
                        shown = time.perf_counter()
                    got = run(x)
                    bad, lsb, first = compare(ref, got, out_names)
                    result.images += 1
                    result.mismatches += bad
                    result.max_lsb = max(result.max_lsb, lsb)
                    if first and result.first_difference is None:
                        result.first_difference = f"{first} on {label}"
                        result.divergence = localise(spec, x, ref, got, run, out_names, reference_probe)
                        if pictures:
                            report.mismatch_samples[(entry["model"], b)] = {"label": label, "input": x,
                                                                            "reference": ref, "backend": got}
            except OtterliteError as err:  # a backend that cannot run this artifact: its cell says why
                result.seconds = time.perf_counter() - started
                result.status = f"error: {str(err).splitlines()[0][:300]}"
                say(f"  {b}: {result.status}")
                continue
            result.seconds = time.perf_counter() - started
            result.status = "exact" if result.mismatches == 0 else "mismatch"
            result.detail = run.detail() if hasattr(run, "detail") else None
            say(f"  {b}: {result.status}" + (f", {result.detail}" if result.detail else ""))
        spec_done.add(key)
        if with_fidelity and entry["model"] not in report.fidelity:
            say(f"  fidelity of {entry['model']} to its float model ...")
            report.fidelity[entry["model"]] = fidelity(entry, spec, hashlib.sha256(spec_bytes).hexdigest(),
                                                       [rgb for _, rgb in photos], target)
    report.results = [r for r in report.results if not r.status.startswith("not applicable")]
    arm_env.stop_workers({BACKENDS[b].arm_cpu for b in names if BACKENDS[b].emulated})
    return report


def localise(spec, x, ref, got, run, names, reference_probe) -> dict:
    """divergence.locate, or why it could not say."""
    try:
        return locate(spec, x, ref, got, names, run, reference_probe)
    except Exception as err:  # noqa: BLE001 - the mismatch stands; only its explanation is missing
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}


def fidelity(entry: dict, spec, spec_sha256: str, photos: list[np.ndarray], target) -> dict:
    """The spec against the float model it was frozen from (not a parity check), judged
    against `target`: measured here when the checkpoint is at hand, else the figures export
    recorded for this very spec; unknown (a failure) when neither is there."""
    measured = measure_fidelity(entry, spec, photos)
    if measured.get("available", True):
        return {**target.judge(entry["model"], measured), "source": "measured"}
    recorded = entry.get("fidelity")
    if isinstance(recorded, dict) and entry.get("spec_sha256") == spec_sha256:
        try:
            return {**target.judge(entry["model"], recorded), "source": f"recorded at export ({measured['reason']})"}
        except (KeyError, TypeError, ValueError):
            measured["reason"] += ", and the figures manifest.json records are unreadable"
    reason = f"fidelity unknown: {measured['reason']}, and manifest.json records none for this spec"
    return {"available": False, "reason": reason, "pass": False, "failures": [reason]}


def float_outputs(entry: dict, x: np.ndarray) -> dict:
    """{"float": the float model's outputs on x (1, 3, H, W) as integers, or None, "float_reason"}:
    the encoder's rounded latents, a transform's output rounded and clamped to 0..255."""
    try:
        import torch

        from otterlite.models.checkpoint import load_encoder_model, load_seaotter

        source = entry["checkpoint"]["source"]
        with torch.no_grad():
            if entry["model"] in ENCODER_KINDS:
                model, _ = load_encoder_model(entry["model"], source, entry["n_ch"], with_decoder=False)
                return {"float": [z.numpy() for z in model.encode(torch.from_numpy(x))], "float_reason": ""}
            bundle, _ = load_seaotter(source)
            transform = copy.deepcopy(bundle.inv if entry["model"] == "seaotter-inverse" else bundle.fwd).double()
            y = torch.clamp(torch.round(transform(torch.from_numpy(x).to(torch.float64))), 0, 255)
            return {"float": [y.to(torch.uint8).numpy()], "float_reason": ""}
    except Exception as err:  # noqa: BLE001 - the checkpoint may live on another machine
        return {"float": None, "float_reason": str(err).splitlines()[0][:200] if str(err) else type(err).__name__}


def measure_fidelity(entry: dict, spec, photos: list[np.ndarray]) -> dict:
    try:
        from otterlite.models.checkpoint import load_encoder_model, load_seaotter
        from otterlite.integer_spec import fidelity as fid
        from otterlite.integer_spec.torch_reference import run_spec

        source = entry["checkpoint"]["source"]
        if entry["model"] in ENCODER_KINDS:
            model, ckpt = load_encoder_model(entry["model"], source, entry["n_ch"])
        else:
            bundle, ckpt = load_seaotter(source)
    except Exception as err:  # the checkpoint may live on another machine
        return {"available": False, "reason": str(err).splitlines()[0][:200]}
    if ckpt.sha256 != entry["checkpoint"]["sha256"]:
        return {"available": False, "reason": f"{source} changed since export"}
    if entry["model"] not in ENCODER_KINDS:
        transform = bundle.inv if entry["model"] == "seaotter-inverse" else bundle.fwd
        return fid.transform_fidelity(spec, transform, photos)
    figures = fid.encoder_fidelity(spec, model, photos)
    d_psnr = []
    for rgb in photos:
        x = fid.padded(rgb, spec.largest_stride)
        original = x[0].numpy().transpose(1, 2, 0)
        decoded = [model.decode(z)[0].numpy().transpose(1, 2, 0) for z in (run_spec(spec, x), model.encode(x))]
        d_psnr.append(psnr(original, decoded[0]) - psnr(original, decoded[1]))
    return {**figures, "decoded_psnr_change_db": float(np.mean(d_psnr))}


def select_backends(patterns: list[str] | None) -> list[str]:
    """Registry names from names or shell patterns ('*-a76', 'ort-O3-*'); None: all."""
    if not patterns:
        return list(BACKENDS)
    names = []
    for pattern in patterns:
        found = [b for b in BACKENDS if fnmatch.fnmatchcase(b, pattern)]
        if not found:
            raise OtterliteError(f"unknown backend {pattern!r}; choose from {', '.join(BACKENDS)} (or a pattern "
                                 f"such as '*-a76')")
        names += [b for b in found if b not in names]
    return names


def cell_text(r: Result | None) -> str:
    if r is None:
        return "-"
    if r.status == "exact":
        return f"exact ({r.images} inputs)" + (f", {r.detail}" if r.detail else "")
    if r.status == "mismatch":
        where = describe(r.divergence)
        return f"MISMATCH {r.mismatches} max {r.max_lsb} LSB, first {r.first_difference}" + (f": {where}" if where else "")
    return r.status


def fidelity_cell(fid: dict | None) -> str:
    if fid is None:
        return "-"
    if "equal_share" not in fid:
        return "unknown: FAIL"
    return f"{100 * fid['equal_share']:.2f}% equal, max {fid['max_lsb']} LSB: " + ("pass" if fid["pass"] else "FAIL")


def format_report(report: Report) -> list[str]:
    """The matrix (a row per backend, a column per model, each as wide as its widest cell),
    the fidelity lines and the verdicts."""
    models = list(dict.fromkeys(r.model for r in report.results))
    backends = list(dict.fromkeys(r.backend for r in report.results))
    cell = {(r.model, r.backend): r for r in report.results}
    rows = [["backend", *models]] + [[b, *(cell_text(cell.get((m, b))) for m in models)] for b in backends]
    if report.fidelity:
        rows.append(["fidelity", *(fidelity_cell(report.fidelity.get(m)) for m in models)])
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
    lines = ["".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in rows]
    for model, fid in report.fidelity.items():
        if "equal_share" not in fid:
            lines.append(f"fidelity {model}: FAIL, {fid['reason']}")
            continue
        extra = f", decoded PSNR change {fid['decoded_psnr_change_db']:+.3f} dB" if "decoded_psnr_change_db" in fid else ""
        inputs = fid.get("inputs") or f"{fid['images']} photos"
        lines.append(f"fidelity {model} ({inputs}, {fid['source']}): {fidelity_summary(fid)}{extra}")
    lines.append("ALL EXACT" if report.exact else "NOT EXACT")
    if report.fidelity:
        lines.append("ALL FAITHFUL" if report.faithful else
                     "NOT FAITHFUL: " + ", ".join(m for m, f in report.fidelity.items() if not f["pass"])
                     + " below the fidelity target")
    return lines


def report_data(report: Report) -> dict:
    """The report as plain data, for JSON."""
    return {"exact": report.exact, "faithful": report.faithful, "results": [asdict(r) for r in report.results],
            "fidelity": report.fidelity}
