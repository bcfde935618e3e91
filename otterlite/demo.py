"""`otterlite demo`: the full sensor -> cloud -> consumer workflow on a bundled photo with the
embedded default models, run on the deployed integer forms, printing bytes, bpp and PSNR
after each stage beside what the float models give."""
from __future__ import annotations

import lzma
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from otterlite.container import read_container, write_container
from otterlite.images import load_rgb, psnr, sample_photo
from otterlite.workflow import (CODEC_IDS, check_codec, decode_file, decode_frame, encode_file, encode_rgb,
                                forward_transform, inverse_transform, transcode_file)


def raw_latent_bytes(frame) -> bytes:
    return b"".join(z.tobytes() for z in frame.latents)


def coder_comparison(frame) -> dict[str, float]:
    """bpp of the same latents under our Rice coder and general-purpose compressors."""
    pixels = frame.width * frame.height
    raw = raw_latent_bytes(frame)
    sizes = {"otterlite-rice": len(write_container(replace(frame, coder="rice"))), "raw int8": len(raw),
             "zlib-9": len(zlib.compress(raw, 9)), "lzma": len(lzma.compress(raw, preset=9))}
    if frame.codec == "WaLLoC":
        sizes["webp (WaLLoC's layout)"] = len(write_container(replace(frame, coder="webp")))
    try:
        import zstandard

        sizes["zstd-19"] = len(zstandard.ZstdCompressor(level=19).compress(raw))
    except ImportError:
        pass
    return {name: 8 * size / pixels for name, size in sizes.items()}


def share_equal(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Share of elements equal in two lists of same-shaped arrays."""
    return sum(int((x == y).sum()) for x, y in zip(a, b)) / sum(x.size for x in a)


def run_demo(image: str | None = None, out_dir: str = "otterlite-demo", n_ch: int | None = None,
             k: int = 1, say=print, codec: str = "frappe") -> dict:
    """Export every model, then run the deployed integer encoder of `codec` (frappe or walloc),
    forward and inverse (numpy runtime, from the exported specs: what a device runs), each
    beside the float model it was frozen from; then verify every artifact on every backend."""
    from otterlite.backends import BACKENDS
    from otterlite.export import FORMATS, MODELS, export
    from otterlite.models.checkpoint import load_encoder_model
    from otterlite.verify import format_report, verify

    image_path = Path(image) if image else sample_photo("astronaut.png")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    stem = image_path.stem
    rgb = load_rgb(image_path)
    say(f"demo on {image_path.name} ({rgb.shape[1]}x{rgb.shape[0]}), embedded default models, output in {out}/")

    kind = check_codec(codec)
    name = CODEC_IDS[kind]
    say(f"[1/5] export: all {len(MODELS)} models -> integer specs + int8 ONNX + TFLite in {models}/")
    export(list(MODELS), list(FORMATS), models, n_ch=n_ch, say=lambda line: say("      " + line))

    model, ckpt = load_encoder_model(kind, None, n_ch)
    otl = encode_file(image_path, out / f"{stem}.otl", models=str(models), codec=codec)
    frame = read_container(otl.path.read_bytes(), str(otl.path))
    float_frame = encode_rgb(model, ckpt.sha256, rgb, kind)
    decoded = decode_frame(model, frame)
    frappe_psnr, float_frappe_psnr = psnr(rgb, decoded), psnr(rgb, decode_frame(model, float_frame))
    latents_equal = share_equal(frame.latents, float_frame.latents)
    say(f"[2/5] sensor encode   {otl.path.name:<18} {otl.size:>8} bytes {otl.bpp:7.4f} bpp  "
        f"{name} reconstruction {frappe_psnr:.2f} dB  ({frame.n_ch} channels, exported encoder on numpy)")
    say(f"      float model: {100 * latents_equal:.2f}% of latents equal, reconstruction "
        f"{float_frappe_psnr:.2f} dB ({frappe_psnr - float_frappe_psnr:+.3f} dB deployed)")
    coders = coder_comparison(frame)
    say("      latent coders (bpp): " + ", ".join(f"{name} {bpp:.4f}" for name, bpp in coders.items()))

    jpg = transcode_file(otl.path, out / f"{stem}.jpg", k=k, models=str(models))
    forward_equal = share_equal([forward_transform(models=str(models)).codes(decoded)],
                                [forward_transform("float").codes(decoded)])
    say(f"[3/5] cloud transcode {jpg.path.name:<18} {jpg.size:>8} bytes {jpg.bpp:7.4f} bpp  "
        f"SEA OTTER JPEG, operating point k={k} ({name} decoder float, exported forward on numpy)")
    say(f"      float forward transform: {100 * forward_equal:.2f}% of codec values equal")

    png = decode_file(jpg.path, out / f"{stem}.png", models=str(models))
    final = load_rgb(png.path)
    final_psnr = psnr(rgb, final)
    float_final = inverse_transform("float")(jpg.path.read_bytes(), str(jpg.path))
    float_psnr = psnr(rgb, float_final)
    inverse_equal = share_equal([final], [float_final])
    say(f"[4/5] consumer decode {png.path.name:<18} {png.size:>8} bytes (PNG)            "
        f"PSNR vs original {final_psnr:.2f} dB (exported inverse on numpy)")
    say(f"      float inverse transform: {100 * inverse_equal:.2f}% of RGB values equal, PSNR vs original "
        f"{float_psnr:.2f} dB ({final_psnr - float_psnr:+.3f} dB deployed)")

    native = [name for name, b in BACKENDS.items() if not b.emulated]
    say("[5/5] verify: every artifact on every backend vs the PyTorch integer reference (the ARM builds of the "
        f"runtimes under QEMU take minutes: otterlite verify {models})")
    report = verify(models, backends=native, say=lambda line: say("      " + line))
    for line in format_report(report):
        say("      " + line)
    return {"exact": report.exact, "faithful": report.faithful, "image": str(image_path), "otl": str(otl.path),
            "otl_bytes": otl.size, "otl_bpp": otl.bpp, "frappe_psnr": frappe_psnr, "jpeg_bytes": jpg.size,
            "jpeg_bpp": jpg.bpp, "psnr": final_psnr, "png": str(png.path), "coders_bpp": coders,
            "float": {"latents_equal": latents_equal, "frappe_psnr": float_frappe_psnr,
                      "forward_equal": forward_equal, "inverse_equal": inverse_equal, "psnr": float_psnr}}
