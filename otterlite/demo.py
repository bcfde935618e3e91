"""`otterlite demo`: the full sensor -> cloud -> consumer workflow on a bundled photo
with the embedded default models, printing bytes, bpp and PSNR after each stage."""
from __future__ import annotations

import lzma
import zlib
from pathlib import Path

from otterlite.container import write_container
from otterlite.images import load_rgb, psnr, sample_photo
from otterlite.workflow import decode_file, decode_frame, encode_rgb, transcode_file, write_atomic


def raw_latent_bytes(frame) -> bytes:
    return b"".join(z.tobytes() for z in frame.latents)


def coder_comparison(frame) -> dict[str, float]:
    """bpp of the same latents under our Rice coder and general-purpose compressors."""
    pixels = frame.width * frame.height
    raw = raw_latent_bytes(frame)
    sizes = {"otterlite-rice": len(write_container(frame)), "raw int8": len(raw),
             "zlib-9": len(zlib.compress(raw, 9)), "lzma": len(lzma.compress(raw, preset=9))}
    try:
        import zstandard

        sizes["zstd-19"] = len(zstandard.ZstdCompressor(level=19).compress(raw))
    except ImportError:
        pass
    return {name: 8 * size / pixels for name, size in sizes.items()}


def run_demo(image: str | None = None, out_dir: str = "otterlite-demo", n_ch: int | None = None,
             k: int = 1, say=print) -> dict:
    from otterlite.models.checkpoint import load_frappe

    image_path = Path(image) if image else sample_photo("astronaut.png")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = image_path.stem
    rgb = load_rgb(image_path)
    say(f"demo on {image_path.name} ({rgb.shape[1]}x{rgb.shape[0]}), embedded default models, output in {out}/")

    model, ckpt = load_frappe(None, n_ch)
    frame = encode_rgb(model, ckpt.sha256, rgb)
    otl = write_atomic(out / f"{stem}.otl", write_container(frame))
    size = otl.stat().st_size
    pixels = rgb.shape[0] * rgb.shape[1]
    frappe_psnr = psnr(rgb, decode_frame(model, frame))
    say(f"[1/3] sensor encode   {otl.name:<18} {size:>8} bytes {8 * size / pixels:7.4f} bpp  "
        f"FRAPPE reconstruction {frappe_psnr:.2f} dB  ({model.n_ch} channels)")
    coders = coder_comparison(frame)
    say("      latent coders (bpp): " + ", ".join(f"{name} {bpp:.4f}" for name, bpp in coders.items()))

    jpg = transcode_file(otl, out / f"{stem}.jpg", k=k)
    say(f"[2/3] cloud transcode {jpg.path.name:<18} {jpg.size:>8} bytes {jpg.bpp:7.4f} bpp  "
        f"SEA OTTER JPEG, operating point k={k}")

    png = decode_file(jpg.path, out / f"{stem}.png")
    final_psnr = psnr(rgb, load_rgb(png.path))
    say(f"[3/3] consumer decode {png.path.name:<18} {png.size:>8} bytes (PNG)            "
        f"PSNR vs original {final_psnr:.2f} dB")
    from otterlite.export import FORMATS, MODELS, export
    from otterlite.verify import format_report, verify

    say("[export] all three models -> int8 ONNX + TFLite + integer specs")
    export(list(MODELS), list(FORMATS), out / "models", n_ch=n_ch, say=lambda line: say("      " + line))
    say("[verify] every artifact on every backend vs the PyTorch integer reference")
    report = verify(out / "models", say=lambda line: say("      " + line))
    for line in format_report(report):
        say("      " + line)
    return {"exact": report.exact, "faithful": report.faithful, "image": str(image_path), "otl_bytes": size,
            "otl_bpp": 8 * size / pixels,
            "frappe_psnr": frappe_psnr, "jpeg_bytes": jpg.size, "jpeg_bpp": jpg.bpp,
            "psnr": final_psnr, "png": str(png.path), "coders_bpp": coders}
