"""The CLI driven in-process: the workflow, the demo, and bad input."""
import math

import numpy as np
import pytest
from PIL import Image

from otterlite.cli import main


def save_png(path, array):
    Image.fromarray(array).save(path)
    return path


def independent_psnr(a_path, b_array):
    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.float64)
    mse = np.mean((a - b_array.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / mse)


def test_demo_runs_the_deployed_path_and_reports_the_psnr_of_the_written_png(tmp_path, photo, capsys):
    """The demo runs the exported integer encoder, forward and inverse (its .otl equals
    `otterlite encode`'s, its PNG equals `decode --runtime onnx`'s) beside the float models."""
    import re

    from otterlite.images import sample_photo

    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    reported = float(re.search(r"PSNR vs original ([0-9.]+) dB", out).group(1))
    assert reported == pytest.approx(independent_psnr(tmp_path / "astronaut.png", photo), abs=0.005)
    assert reported > 20
    assert "ALL EXACT" in out and "ALL FAITHFUL" in out and "ort-O3-t2" in out
    assert (tmp_path / "models" / "manifest.json").is_file()
    assert "exported encoder on numpy" in out
    equal = float(re.search(r"float model: ([0-9.]+)% of latents equal", out).group(1))
    assert 99 <= equal < 100  # the deployed encoder is the integer one, not the float model
    assert re.search(r"float inverse transform: [0-9.]+% of RGB values equal", out)
    assert main(["encode", str(sample_photo("astronaut.png")), "-o", str(tmp_path / "enc.otl")]) == 0
    assert (tmp_path / "enc.otl").read_bytes() == (tmp_path / "astronaut.otl").read_bytes()
    assert main(["decode", str(tmp_path / "astronaut.jpg"), "-o", str(tmp_path / "dec.png"), "--runtime", "onnx",
                 "--models", str(tmp_path / "models")]) == 0
    assert (tmp_path / "dec.png").read_bytes() == (tmp_path / "astronaut.png").read_bytes()


def test_encode_transcode_decode_any_size(tmp_path, odd_photo):
    src = save_png(tmp_path / "in.png", odd_photo)
    otl, jpg, png = tmp_path / "a.otl", tmp_path / "a.jpg", tmp_path / "a.png"
    assert main(["encode", str(src), "-o", str(otl), "--n-ch", "9"]) == 0
    assert main(["transcode", str(otl), "-o", str(jpg), "--k", "2"]) == 0
    assert main(["decode", str(jpg), "-o", str(png)]) == 0
    out = np.asarray(Image.open(png))
    assert out.shape == odd_photo.shape
    assert independent_psnr(png, odd_photo) > 18
    assert main(["info", str(otl)]) == 0 and main(["info", str(jpg)]) == 0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_other_image_modes_are_converted_with_a_notice(tmp_path, photo, mode, capsys):
    rgb = Image.fromarray(photo[:64, :64])
    if mode == "I;16":
        img = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
    else:
        img = rgb.convert(mode)
    src = tmp_path / "in.png"
    img.save(src)
    assert main(["encode", str(src), "-o", str(tmp_path / "x.otl")]) == 0
    assert "notice:" in capsys.readouterr().err


def expect_error(capsys, argv, fragment, output=None):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otterlite: error:") and fragment in err and err.count("\n") == 1
    if output is not None:
        assert not output.exists()
        assert not list(output.parent.glob(f".{output.name}*"))


def test_bad_input(tmp_path, photo, capsys):
    src = save_png(tmp_path / "in.png", photo[:64, :64])
    otl, jpg = tmp_path / "good.otl", tmp_path / "good.jpg"
    assert main(["encode", str(src), "-o", str(otl)]) == 0
    assert main(["transcode", str(otl), "-o", str(jpg)]) == 0
    out = tmp_path / "out.bin"
    expect_error(capsys, ["encode", str(tmp_path / "nope.png"), "-o", str(out)], "no such file", out)
    expect_error(capsys, ["encode", str(otl), "-o", str(out)], "not a readable image", out)
    expect_error(capsys, ["encode", str(src), "-o", str(out), "--n-ch", "13"], "1..12", out)
    tiny = save_png(tmp_path / "tiny.png", photo[:10, :10])
    expect_error(capsys, ["encode", str(tiny), "-o", str(out)], "smaller than one 32x32 patch", out)
    expect_error(capsys, ["transcode", str(src), "-o", str(out)], "not an otterlite latent container", out)
    trunc = tmp_path / "trunc.otl"
    trunc.write_bytes(otl.read_bytes()[:-20])
    expect_error(capsys, ["transcode", str(trunc), "-o", str(out)], "corrupted", out)
    expect_error(capsys, ["transcode", str(otl), "-o", str(out), "--k", "9"], "--k 9", out)
    expect_error(capsys, ["decode", str(otl), "-o", str(out)], "not a JPEG", out)
    bad_jpg = tmp_path / "trunc.jpg"
    bad_jpg.write_bytes(jpg.read_bytes()[:300])
    expect_error(capsys, ["decode", str(bad_jpg), "-o", str(out)], "truncated or corrupted", out)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(photo[:64, :64]).save(plain)
    expect_error(capsys, ["decode", str(plain), "-o", str(out)], "--force", out)
    expect_error(capsys, ["encode", str(src), "-o", str(out), "--checkpoint", str(tmp_path / "no")],
                 "no such directory", out)
    expect_error(capsys, ["encode", str(src), "-o", str(tmp_path / "nodir" / "x.otl")], "does not exist")


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = capsys.readouterr().out
    assert "example" in out and "  otterlite encode photo.png -o photo.otl" in out
