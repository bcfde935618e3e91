"""The stage commands run what ships: encode, transcode's forward and decode on the exported
integer specs, identical bytes on every integer runtime, and a lite install (numpy and Pillow only) running encode and decode from an export."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otterlite import backends
from otterlite.cli import main
from otterlite.export import export
from otterlite.images import sample_photo
from otterlite.models.jpeg import read_codec_jpeg
from otterlite.runtime import load_forward_spec, load_inverse_spec
from otterlite.integer_spec.torch_reference import run_spec
from published import write_upstream_seaotter

INTEGER_RUNTIMES = ("numpy", "onnx", "tflite", "torch")  # all of them run the transforms; c the inverse too


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    export(["frappe-encoder", "seaotter-inverse", "seaotter-forward"], ["onnx"], out, input_size="64x64",
           say=lambda line: None)
    return out


@pytest.fixture(scope="module")
def stages(models, tmp_path_factory):
    """coffee.png (cropped to an odd size) encoded and transcoded at k=1 with the export."""
    out = tmp_path_factory.mktemp("stages")
    src = out / "in.png"
    Image.fromarray(np.asarray(Image.open(sample_photo("coffee.png")))[:150, :210]).save(src)
    assert main(["encode", str(src), "-o", str(out / "a.otl"), "--models", str(models)]) == 0
    assert main(["transcode", str(out / "a.otl"), "-o", str(out / "a.jpg"), "--k", "1", "--models", str(models)]) == 0
    return out


def reference(spec, image):
    """The PyTorch integer reference on one (H, W, 3) uint8 image."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    return run_spec(spec, x)[0][0].numpy().transpose(1, 2, 0)


def test_decode_writes_identical_png_on_every_integer_runtime(models, stages, tmp_path):
    jpg = stages / "a.jpg"
    written = {}
    for runtime in (*INTEGER_RUNTIMES, "c"):
        assert main(["decode", str(jpg), "-o", str(tmp_path / f"{runtime}.png"), "--runtime", runtime,
                     "--models", str(models)]) == 0
        written[runtime] = (tmp_path / f"{runtime}.png").read_bytes()
    assert main(["decode", str(jpg), "-o", str(tmp_path / "frozen.png")]) == 0  # no --models: frozen here
    written["frozen"] = (tmp_path / "frozen.png").read_bytes()
    assert len(set(written.values())) == 1
    codes, _ = read_codec_jpeg(jpg.read_bytes())
    got = np.asarray(Image.open(tmp_path / "numpy.png"))
    np.testing.assert_array_equal(got, reference(load_inverse_spec(models), codes))
    assert main(["decode", str(jpg), "-o", str(tmp_path / "float.png"), "--runtime", "float"]) == 0
    float_rgb = np.asarray(Image.open(tmp_path / "float.png")).astype(int)
    assert np.abs(float_rgb - got).max() <= 1 and (float_rgb == got).mean() > 0.99


def test_transcode_writes_identical_jpeg_on_every_integer_runtime(models, stages, tmp_path):
    otl = stages / "a.otl"
    written = {}
    for runtime in INTEGER_RUNTIMES:
        assert main(["transcode", str(otl), "-o", str(tmp_path / f"{runtime}.jpg"), "--k", "1",
                     "--runtime", runtime, "--models", str(models)]) == 0
        written[runtime] = (tmp_path / f"{runtime}.jpg").read_bytes()
    assert main(["transcode", str(otl), "-o", str(tmp_path / "frozen.jpg"), "--k", "1"]) == 0
    written["frozen"] = (tmp_path / "frozen.jpg").read_bytes()
    assert len(set(written.values())) == 1
    assert written["numpy"] == (stages / "a.jpg").read_bytes()
    assert main(["transcode", str(otl), "-o", str(tmp_path / "float.jpg"), "--k", "1", "--runtime", "float"]) == 0
    float_codes, _ = read_codec_jpeg((tmp_path / "float.jpg").read_bytes())
    codes, meta = read_codec_jpeg(written["numpy"])
    assert meta["k"] == 1 and np.abs(float_codes.astype(int) - codes).max() <= 2


def test_numpy_forward_matches_the_reference(models, photo):
    """The numpy forward transform (a new runtime path) against the PyTorch integer reference."""
    from otterlite.runtime import apply_forward

    spec = load_forward_spec(models)
    image = np.ascontiguousarray(photo[:77, :93])
    np.testing.assert_array_equal(apply_forward(spec, image), reference(spec, image))
    extremes = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(apply_forward(spec, extremes), reference(spec, extremes))


def test_arch_d_transforms_in_numpy_and_c_match_the_reference(tmp_path, photo, monkeypatch):
    """A 3x3 SEA OTTER (arch D, zero padding at the borders): the numpy forward, the numpy
    inverse in bands and the generated C inverse against the PyTorch integer reference on an
    odd-sized image."""
    from otterlite.runtime import consumer
    from otterlite.firmware_sim.consumer import LibraryInverse
    from otterlite.models.checkpoint import load_seaotter
    from otterlite.runtime import apply_forward
    from otterlite.integer_spec.freeze import freeze_seaotter_forward, freeze_seaotter_inverse

    folder, _ = write_upstream_seaotter(tmp_path / "d", "D", "jfif", seed=3)
    bundle, ckpt = load_seaotter(str(folder))
    forward, inverse = freeze_seaotter_forward(bundle, ckpt.sha256), freeze_seaotter_inverse(bundle, ckpt.sha256)
    assert forward.stages[0].pad == 1 and inverse.kernel == 3
    image = np.ascontiguousarray(photo[:37, :51])
    np.testing.assert_array_equal(apply_forward(forward, image), reference(forward, image))
    codes = np.random.default_rng(4).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    codes[0, 0], codes[-1, -1] = 0, 255  # singular codes at the corners
    np.testing.assert_array_equal(LibraryInverse(inverse, tmp_path / "c").transform(codes), reference(inverse, codes))
    monkeypatch.setattr(consumer, "BAND_PIXELS", 7 * 41)  # five bands, the 3x3 mix reaching across each band's edges
    np.testing.assert_array_equal(consumer.apply_inverse(inverse, codes), reference(inverse, codes))


def expect_error(capsys, argv, fragment, output):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otterlite: error:") and fragment in err and err.count("\n") == 1, err
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*"))


def test_stage_commands_refuse_bad_runtime_models_and_mismatched_exports(models, stages, tmp_path, capsys,
                                                                         monkeypatch):
    jpg, otl, out = stages / "a.jpg", stages / "a.otl", tmp_path / "out.png"
    encoder_only = tmp_path / "encoder-only"
    encoder_only.mkdir()
    (encoder_only / "frappe-encoder.spec").write_bytes((models / "frappe-encoder.spec").read_bytes())
    expect_error(capsys, ["decode", str(jpg), "-o", str(out), "--models", str(encoder_only)],
                 "seaotter-inverse.spec: no such file", out)
    expect_error(capsys, ["transcode", str(otl), "-o", str(out), "--models", str(encoder_only)],
                 "seaotter-forward.spec: no such file", out)
    expect_error(capsys, ["decode", str(jpg), "-o", str(out), "--models", str(models), "--seaotter-checkpoint",
                          "default"], "give --models or --seaotter-checkpoint", out)
    expect_error(capsys, ["decode", str(jpg), "-o", str(out), "--models", str(models), "--runtime", "float"],
                 "--runtime float", out)
    expect_error(capsys, ["transcode", str(otl), "-o", str(out), "--models", str(models), "--k", "7"],
                 "--k 7 is out of range", out)
    with pytest.raises(SystemExit) as exit_:
        main(["transcode", str(otl), "-o", str(out), "--runtime", "c"])  # no generated C for the forward
    assert exit_.value.code == 2 and not out.exists() and "invalid choice: 'c'" in capsys.readouterr().err
    monkeypatch.setitem(backends.BACKENDS, "litert", backends.Backend(
        "litert", "tflite", lambda: "ai_edge_litert not installed (pip install 'otterlite[litert]')", None))
    expect_error(capsys, ["decode", str(jpg), "-o", str(out), "--runtime", "tflite", "--models", str(models)],
                 "--runtime tflite: ai_edge_litert not installed", out)
    monkeypatch.undo()
    # a JPEG of another SEA OTTER checkpoint than the export's
    other, _ = write_upstream_seaotter(tmp_path / "other-seaotter", K=2, seed=5)
    assert main(["transcode", str(otl), "-o", str(tmp_path / "other.jpg"), "--seaotter-checkpoint", str(other)]) == 0
    expect_error(capsys, ["decode", str(tmp_path / "other.jpg"), "-o", str(out), "--models", str(models)],
                 "written with SEA OTTER checkpoint", out)


def test_lite_install_encodes_and_decodes_with_numpy_and_pillow_only(models, stages, tmp_path):
    """A fresh venv holding numpy and Pillow only (no torch, onnx or TFLite) runs `encode --models`
    and `decode --models` end to end; the bytes equal those of the full install."""
    venv = tmp_path / "lite"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "numpy", "pillow"],
                   check=True)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                            text=True).stdout.lower()
    assert "torch" not in listed and "onnx" not in listed
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}

    def lite(*argv):
        return subprocess.run([str(python), "-m", "otterlite", *argv], env=env, capture_output=True, text=True)
    src = stages / "in.png"
    done = lite("encode", str(src), "-o", str(tmp_path / "lite.otl"), "--models", str(models))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lite.otl").read_bytes() == (stages / "a.otl").read_bytes()
    done = lite("decode", str(stages / "a.jpg"), "-o", str(tmp_path / "lite.png"), "--models", str(models))
    assert done.returncode == 0, done.stderr
    assert main(["decode", str(stages / "a.jpg"), "-o", str(tmp_path / "full.png"), "--models", str(models)]) == 0
    assert (tmp_path / "lite.png").read_bytes() == (tmp_path / "full.png").read_bytes()
    done = lite("decode", str(stages / "a.jpg"), "-o", str(tmp_path / "no.png"))
    assert done.returncode == 2 and "pass --models DIR" in done.stderr and not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("defines", [(), ("OTL_NO_AVX512",)])
def test_c_consumer_decodes_like_numpy(tmp_path, photo, defines):
    """The generated C inverse linked with libjpeg (--runtime c) against the numpy consumer
    (Pillow's raw components, the 2^24-entry table): the upstream-style checkpoint's singular
    tables (about 2^38) on every code triple and on an odd-sized photo's JPEG (libjpeg's raw
    planes, the last band of 8 rows cut short), the same photo subsampled 4:2:0 (not raw:
    libjpeg upsamples, as under Pillow), the 3x3 arch D (the whole image decoded first) on an
    odd-sized one; a truncated JPEG is an error, not grey pixels."""
    from otterlite.errors import OtterliteError
    from otterlite.firmware_sim.consumer import LibraryInverse
    from otterlite.models.checkpoint import load_seaotter
    from otterlite.models.jpeg import write_codec_jpeg
    from otterlite.runtime import ConsumerDecoder
    from otterlite.integer_spec.freeze import freeze_seaotter_inverse

    for arch, image in (("A", photo[:117, :157]), ("D", photo[:37, :51])):
        folder, _ = write_upstream_seaotter(tmp_path / arch, arch, "jfif", seed=5)
        bundle, ckpt = load_seaotter(str(folder))
        inverse = freeze_seaotter_inverse(bundle, ckpt.sha256)
        library = LibraryInverse(inverse, tmp_path / f"c-{arch}", jpeg=True, defines=defines)
        numpy_consumer = ConsumerDecoder(inverse, table=arch == "A")
        if arch == "A":
            assert inverse.accumulator_bound > 2 ** 31  # the singular codes: int64 sums
            every = np.arange(2 ** 24, dtype=np.uint32).view(np.uint8).reshape(4096, 4096, 4)[..., :3]
            np.testing.assert_array_equal(library.transform(every), numpy_consumer.transform(every))
        codes = np.ascontiguousarray(image[..., ::-1])  # any codes: the photo's channels reversed
        jpeg = write_codec_jpeg(codes, bundle.qtable(1), ckpt.sha256, 1)
        h, w = codes.shape[:2]
        np.testing.assert_array_equal(library.decode(jpeg, w, h), numpy_consumer.decode(jpeg))
        if arch == "A":
            subsampled = io.BytesIO()
            Image.open(io.BytesIO(jpeg)).save(subsampled, format="JPEG", subsampling=2, quality=90,
                                              comment=Image.open(io.BytesIO(jpeg)).info["comment"])
            np.testing.assert_array_equal(library.decode(subsampled.getvalue(), w, h),
                                          numpy_consumer.decode(subsampled.getvalue()))
        with pytest.raises(OtterliteError, match="unreadable JPEG .libjpeg: .*truncated or corrupted"):
            library.decode(jpeg[:len(jpeg) // 2], w, h)
    plain = library.decode(jpeg, w, h, inverse=False)
    np.testing.assert_array_equal(plain, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
