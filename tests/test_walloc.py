"""WaLLoC: our wavelet against PyWavelets, the float model against WALLOC.md's formulas,
the published-format loader, and the exact wrap-around encoder spec on every emitter."""
import copy
import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

import published
from otterlite.errors import OtterliteError
from otterlite.integer_spec.freeze import freeze_walloc_encoder
from otterlite.integer_spec.torch_reference import run_spec
from otterlite.integer_spec.types import load_spec, save_spec
from otterlite.models.checkpoint import load_walloc
from otterlite.models.walloc import DWT, IDWT

pywt = pytest.importorskip("pywt")


@pytest.fixture(scope="module")
def walloc_dir(tmp_path_factory):
    return published.write_walloc(tmp_path_factory.mktemp("walloc"))


@pytest.fixture(scope="module")
def walloc_model(walloc_dir):
    return load_walloc(str(walloc_dir))


@pytest.mark.parametrize("height,width", [(24, 40), (2, 4), (4, 6)])  # below the filter: wraps more than once
def test_one_level_equals_pywavelets_and_inverts(height, width):
    x = torch.randn(1, 2, height, width, dtype=torch.float64)
    y = DWT().double()(x)
    for c in range(2):
        a, (h, v, d) = pywt.dwt2(x[0, c].numpy(), "bior4.4", mode="periodization")
        for f, band in enumerate((a, h, v, d)):
            np.testing.assert_allclose(y[0, 4 * c + f].numpy(), band, atol=1e-6)  # float32 filters
    np.testing.assert_allclose(IDWT().double()(y).numpy(), x.numpy(), atol=1e-6)
    z = pywt.idwt2((a, (h, v, d)), "bior4.4", mode="periodization")
    np.testing.assert_allclose(IDWT().double()(y)[0, 1].numpy(), z, atol=1e-6)


def test_float_model_equals_the_formulas(walloc_model, walloc_dir):
    model, _ = walloc_model
    state = torch.load(walloc_dir / "RGB_16x.pth", weights_only=True)["model_state_dict"]
    rgb = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = published.walloc_latents_float64(state, published.WALLOC_CONFIG, rgb)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        companded = copy.deepcopy(model.sensor_encoder()).double().companded(x)[0].numpy()
    assert np.abs(companded - expected).max() < 1e-4
    latents = model.encode(x)[0][0].numpy().astype(np.float64)
    clear = np.abs(np.abs(expected - np.floor(expected)) - 0.5) > 1e-3  # not on a rounding tie
    assert (latents == np.round(expected))[clear].all() and clear.mean() > 0.99


def test_decoder_equals_diffusers_then_pywavelets_synthesis(walloc_model):
    from scipy.special import ndtri

    model, _ = walloc_model
    latents = torch.randint(-127, 128, (1, 12, 4, 6)).to(torch.float32)
    cfg = model.config
    p = np.clip(latents.numpy().astype(np.float64) / (2 * cfg.latent_max) + 0.5, 1e-4, 0.9999)
    normal = torch.from_numpy(cfg.scale * ndtri(p)).to(torch.float32)
    with torch.no_grad():
        bands = model.decoder[1](normal)[0].double().numpy()  # diffusers' Decoder, 192 bands
        ours = model.decode_float(latents)[0].double().numpy()
    for _ in range(cfg.J):  # packet synthesis: every 4 channels [a, h, v, d] -> one
        bands = np.stack([pywt.idwt2((bands[i], (bands[i + 1], bands[i + 2], bands[i + 3])), "bior4.4",
                                     mode="periodization") for i in range(0, len(bands), 4)])
    assert np.abs(ours - np.clip(bands, -0.5, 0.5)).max() < 1e-5


def test_composed_kernel_is_the_cascade_with_wraparound(walloc_model):
    model, _ = walloc_model
    encoder = copy.deepcopy(model.sensor_encoder()).double()
    kernel, bias, pad = encoder.composed_kernel()
    assert kernel.shape == (12, 3, 57, 57) and pad == 28
    x = torch.rand(1, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        cascade = torch.nn.functional.conv2d(encoder.analysis(x), encoder.encoder[0].weight, encoder.encoder[0].bias)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="circular")
    composed = torch.nn.functional.conv2d(padded, torch.from_numpy(kernel), torch.from_numpy(bias), stride=8)
    assert torch.allclose(cascade, composed, atol=1e-10)
    bottom = x.clone()
    bottom[:, :, -4:] = 0  # periodization: latent row 0 reads the last image rows
    with torch.no_grad():
        changed = torch.nn.functional.conv2d(encoder.analysis(bottom), encoder.encoder[0].weight)
    assert (changed - cascade + encoder.encoder[0].bias[None, :, None, None])[0, :, 0].abs().max() > 1e-6


def test_loader_round_trip_and_refusals(tmp_path, walloc_dir, walloc_model):
    model, ckpt = walloc_model
    assert ckpt.config["Nd"] == 32 and len(ckpt.sha256) == 64
    encoder_only, same = load_walloc(str(walloc_dir), with_decoder=False)
    assert encoder_only.decoder is None and same.sha256 == ckpt.sha256
    state = torch.load(walloc_dir / "RGB_16x.pth", weights_only=True)["model_state_dict"]
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "RGB_16x.json").write_text(json.dumps(published.WALLOC_CONFIG))
    torch.save({"model_state_dict": state, "extra": Fraction(1, 3)}, bad / "RGB_16x.pth")  # needs a global
    with pytest.raises(OtterliteError, match="needs a full unpickler"):
        load_walloc(str(bad))
    torch.save({"weights": state}, bad / "RGB_16x.pth")
    with pytest.raises(OtterliteError, match="model_state_dict"):
        load_walloc(str(bad))
    missing = {k: v for k, v in state.items() if k != "encoder.0.bias"}
    published.write_walloc(bad, state=missing)
    with pytest.raises(OtterliteError, match=r"missing \['encoder.0.bias'\]"):
        load_walloc(str(bad))
    published.write_walloc(bad, state={**state, "encoder.0.weight": state["encoder.0.weight"][:6]})
    with pytest.raises(OtterliteError, match="size mismatch"):
        load_walloc(str(bad))
    published.write_walloc(bad, cfg={**published.WALLOC_CONFIG, "lightweight_encode": False})
    with pytest.raises(OtterliteError, match="not an exact linear map"):
        load_walloc(str(bad))
    (bad / "RGB_16x.json").write_text(json.dumps(published.WALLOC_CONFIG))
    (bad / "RGB_16x.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(OtterliteError, match="not a readable torch file"):
        load_walloc(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OtterliteError, match="NAME.json \\+ NAME.pth"):
        load_walloc(str(empty))


def test_hub_offline_fails_fast_with_fix(tmp_path):
    with pytest.raises(OtterliteError) as err:
        load_walloc("hub:danjacobellis/walloc", cache_dir=str(tmp_path))
    assert "RGB_16x.pth" in str(err.value) and "--checkpoint DIR" in str(err.value)
    with pytest.raises(OtterliteError, match=r"hub:OWNER/REPO\[/NAME\]"):
        load_walloc("hub:onlyname")


def test_hub_source_reads_a_local_cache_offline(tmp_path):
    snapshot = published.hub_snapshot(tmp_path, "danjacobellis/walloc")
    published.write_walloc(snapshot)
    model, ckpt = load_walloc("hub:danjacobellis/walloc", cache_dir=str(tmp_path), with_decoder=False)
    assert model.config.Nd == 32 and ckpt.source.endswith(snapshot.name)


@pytest.fixture(scope="module")
def walloc_spec(walloc_model):
    model, ckpt = walloc_model
    return load_spec(save_spec(freeze_walloc_encoder(model, ckpt.sha256, 12)))


def test_spec_is_faithful_and_keeps_its_border(walloc_model, walloc_spec):
    from otterlite.integer_spec.fidelity import encoder_fidelity
    from otterlite.images import load_rgb, sample_photo

    model, _ = walloc_model
    assert walloc_spec.stages[0].border == "wrap" and walloc_spec.stages[0].pad == 28
    photos = [load_rgb(sample_photo("astronaut.png"))[:200, :264]]
    fid = encoder_fidelity(walloc_spec, model, photos)
    assert fid["equal_share"] >= 0.99 and fid["max_lsb"] <= 1
    blob = bytearray(save_spec(walloc_spec))
    at = blob.index(b'"border": "wrap"')
    blob[at: at + 16] = b'"border": "wavy"'
    with pytest.raises(OtterliteError, match="border"):
        load_spec(bytes(blob))


@pytest.mark.parametrize("height,width", [(64, 96), (16, 24), (8, 8)])
def test_every_emitter_matches_the_reference(walloc_spec, height, width):
    """numpy, ONNX and TFLite (wrap by slices) against the torch reference, including frames
    smaller than the kernel (wrapping more than once)."""
    from otterlite.export import build
    from otterlite.runtime.encoder import encode_frame
    from otterlite.verify import boundary_images

    inputs = [np.random.default_rng(height).integers(0, 256, (1, 3, height, width), dtype=np.uint8)]
    inputs += [x for _, x in boundary_images(walloc_spec, height, width)]
    ort = pytest.importorskip("onnxruntime")
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    session = ort.InferenceSession(build(walloc_spec, "onnx", height, width), providers=["CPUExecutionProvider"])
    interpreter = litert.Interpreter(model_content=build(walloc_spec, "tflite", height, width))
    interpreter.allocate_tensors()
    for x in inputs:
        ref = run_spec(walloc_spec, torch.from_numpy(x))[0].numpy()
        assert ref.shape == (1, 12, height // 8, width // 8)
        assert (encode_frame(walloc_spec, np.ascontiguousarray(x[0].transpose(1, 2, 0)))[0] == ref[0]).all()
        assert (session.run(None, {"image": x})[0] == ref).all()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert (out.transpose(0, 3, 1, 2) == ref).all()


def test_boundary_frames_reach_the_extremes(walloc_spec):
    from otterlite.verify import boundary_images

    stage = walloc_spec.stages[0]
    lo, hi = stage.accumulator_range()
    frames = boundary_images(walloc_spec, 128, 128)
    _, trace = run_spec(walloc_spec, torch.from_numpy(frames[0][1]), intermediate=True)
    acc = trace["stage0.accumulator"][0]
    t = stage.thresholds[0][(stage.thresholds[0] > lo[0]) & (stage.thresholds[0] <= hi[0])][0]
    assert acc[0, 0, 0] == hi[0] and acc[0, 0, 8] == lo[0] and acc[0, 8, 0] == t - 1 and acc[0, 8, 8] == t


HOST_BACKENDS = ["torch-int", "numpy", "numpy-streaming", "ort-O0-t1", "ort-O3-t2", "litert", "litert-reference", "tflite-runtime",
                 "tflm", "c", "c-lib", "qemu-cortex-m4"]


def test_export_and_verify_on_every_host_backend(tmp_path, walloc_dir, capsys):
    """`otterlite export walloc-encoder` from a published-format checkpoint, then verify:
    exact on every host backend that runs it (test_arm runs the default on the ARM builds;
    test_export_verify the default on every host backend) and faithful to the float model; flags that do not apply are refused."""
    from otterlite.backends import BACKENDS
    from otterlite.cli import main

    if os.environ.get("OTTERLITE_REQUIRE_ALL_BACKENDS"):
        assert not [b for b in HOST_BACKENDS if BACKENDS[b].missing()]
    out = tmp_path / "out"
    assert main(["export", "walloc-encoder", "--walloc-checkpoint", str(walloc_dir), "--format", "onnx,tflite",
                 "--input-size", "64x96", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["model"] for e in manifest["artifacts"]} == {"walloc-encoder"}
    assert manifest["artifacts"][0]["fidelity"]["pass"]
    backends = [b for b in HOST_BACKENDS if not BACKENDS[b].missing()]
    assert main(["verify", str(out), "--backends", *backends, "--json", str(tmp_path / "v.json")]) == 0
    report = json.loads((tmp_path / "v.json").read_text())
    assert {r["backend"] for r in report["results"]} == set(backends)
    assert all(r["status"] == "exact" for r in report["results"]) and report["faithful"]
    capsys.readouterr()
    assert main(["export", "walloc-encoder", "--checkpoint", str(walloc_dir), "-o", str(tmp_path / "x")]) == 2
    assert "--walloc-checkpoint" in capsys.readouterr().err
    assert main(["export", "frappe-encoder", "--walloc-checkpoint", str(walloc_dir), "-o", str(tmp_path / "x")]) == 2
    assert "--walloc-checkpoint applies to walloc-encoder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("height,width", [(61, 90), (16, 24), (5, 7), (120, 40)])
def test_streaming_encoder_rows_in_any_order_of_completion(walloc_spec, height, width):
    """Row by row (latent rows 0..3 complete with the last image rows, the bottom ones start
    with the first), edge-padded to multiples of 8, equal to the reference, accumulators too."""
    from otterlite.images import pad_to_multiple
    from otterlite.runtime import streaming_encoder

    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = torch.from_numpy(pad_to_multiple(rgb, 8).transpose(2, 0, 1).copy())[None]
    ref, trace = run_spec(walloc_spec, x, intermediate=True)
    encoder = streaming_encoder(walloc_spec, width, height)
    completed = [[i for _, i, _ in encoder.push(rgb[r])] for r in range(height)]
    completed[-1] += [i for _, i, _ in encoder.finish()]
    assert sorted(sum(completed, [])) == list(range(-(-height // 8)))
    if height >= 64:  # rows 0..3 read the last image rows; nothing waits for more than the frame
        assert {0, 1, 2, 3} <= set(completed[-1]) and not {0, 1, 2, 3} & set(sum(completed[:-1], []))
    assert (encoder.encode(rgb)[0] == ref[0].numpy()[0]).all()
    assert (encoder.trace(rgb)[0] == trace["stage0.accumulator"][0].numpy()).all()
    with pytest.raises(OtterliteError, match="expected uint8"):
        encoder.push(rgb[0, :-1])


@pytest.fixture(scope="module")
def walloc_c(walloc_spec, tmp_path_factory):
    from otterlite.firmware_sim import generate, host

    if host.find_compiler() is None:
        pytest.skip("no C compiler")
    folder = generate(walloc_spec, tmp_path_factory.mktemp("walloc-c") / "src")
    return folder, host.LibraryEncoder(host.build_library(folder), walloc_spec)


@pytest.mark.parametrize("height,width", [(64, 96), (61, 90), (16, 24), (8, 8)])
def test_c_encoder_matches_the_reference(walloc_spec, walloc_c, height, width):
    """The generated C (wrap-around kernel, rows streamed, latent rows completed out of order):
    every kernel variant under the sanitizers, the library (rows and planes) and the .otl
    bytes equal the reference, including frames smaller than the kernel and sides that are
    not multiples of 8."""
    from otterlite.container import LatentFrame, write_container
    from otterlite.firmware import reference_latents
    from otterlite.firmware_sim import build_host, encode_c, host
    from otterlite.verify import boundary_images
    from test_firmware import KERNELS

    folder, library = walloc_c
    rng = np.random.default_rng(width)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8)]
    if height % 8 == 0 and width % 8 == 0:
        frames += [np.ascontiguousarray(x[0].transpose(1, 2, 0)) for _, x in boundary_images(walloc_spec, height, width)]
    binaries = [build_host(folder, sanitize=True, defines=d) for d in KERNELS]
    for rgb in frames:
        want = reference_latents(walloc_spec, rgb)
        for binary in binaries:
            assert all((a == z).all() for a, z in zip(want, encode_c(binary, walloc_spec, rgb))), binary.name
        assert (library.encode(rgb)[0] == want[0]).all()
        assert (library.encode(np.ascontiguousarray(rgb.transpose(2, 0, 1)), planar=True)[0] == want[0]).all()
    frame = LatentFrame(walloc_spec.source_sha256, width, height, [(8, 0, 12)], want, codec="WaLLoC")
    assert host.run_harness([str(binaries[0])], frames[-1], container=True) == write_container(frame)


def test_firmware_report_and_run_for_walloc(walloc_spec, tmp_path, capsys):
    """`otterlite firmware --codec walloc`: the C's state is OTL_OPEN_ROWS = 4 + 3 + 8
    accumulator rows, the Cortex-M4 build links into the part and runs 640x480 under QEMU,
    1920x1080 is refused there by name; `firmware run` is exact with identical containers."""
    from otterlite.cli import main
    from otterlite.firmware_sim.codegen import open_rows
    from otterlite.firmware_sim import host
    from otterlite.images import sample_photo

    if host.find_compiler() is None:
        pytest.skip("no C compiler")
    models = tmp_path / "models"
    models.mkdir()
    (models / "walloc-encoder.spec").write_bytes(save_spec(walloc_spec))
    assert main(["firmware", str(models), "-o", str(tmp_path / "no")]) == 2
    assert "add --codec walloc" in capsys.readouterr().err and not (tmp_path / "no").exists()
    out = tmp_path / "fw"
    assert main(["firmware", str(models), "--codec", "walloc", "--target", "cortex-m4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert open_rows(walloc_spec.stages[0]) == 15
    frame = report["frames"]["640x480"]
    assert frame["macs"] == 60 * 80 * 12 * 3 * 57 * 57
    assert frame["state_bytes"] == 4 * (15 * 80 * 12 + 3) + (3 * (640 + 56) + 176) + 80 * 12
    m4 = report["cpus"]["cortex-m4"]
    if m4["measured"]:
        assert m4["frames"]["640x480"]["instructions"] > frame["macs"] / 4  # at most 2 MACs per SMLAD
        assert "OTL_MCU_MAX_WIDTH 640" in m4["frames"]["1920x1080"]["reason"]
        assert "1920x1080: not run" in printed
    photos = [str(sample_photo("astronaut.png")), str(sample_photo("rocket.jpg"))]
    assert main(["firmware", "run", str(out), *photos]) == 0
    assert capsys.readouterr().out.count("exact, container bytes identical") == 2


def test_container_records_the_codec_and_both_latent_layouts_round_trip():
    from otterlite.container import LatentFrame, read_container, write_container

    z = np.random.default_rng(5).integers(-127, 128, (12, 8, 12)).astype(np.int8)
    for coder in ("rice", "webp"):
        data = write_container(LatentFrame("ab" * 32, 90, 60, [(8, 0, 12)], [z], "WaLLoC", coder))
        back = read_container(data)
        assert (back.codec, back.coder, back.width, back.height) == ("WaLLoC", coder, 90, 60)
        assert (back.latents[0] == z).all()
    # upstream's tiling: channel 4c + 2 nh + nw at tile (nh, nw) of RGB channel c
    from io import BytesIO

    from PIL import Image

    from otterlite.latent_coder import encode_webp
    image = np.asarray(Image.open(BytesIO(encode_webp(z))))
    assert (image[8:16, 0:12, 2].astype(int) - 128 == z[4 * 2 + 2 * 1 + 0]).all()
    with pytest.raises(OtterliteError, match="one 12-channel group"):
        write_container(LatentFrame("ab" * 32, 16, 16, [(8, 0, 6), (16, 6, 12)],
                                    [z[:6, :2, :2], z[6:, :1, :1]], "FRAPPE", "webp"))


def test_encode_transcode_decode_with_walloc(tmp_path, capsys):
    """The embedded default WaLLoC through the workflow: every integer runtime (C included)
    writes the same container, the WebP layout holds the same latents, transcode picks the codec from the
    container, and the float encoder is within 1 LSB of the deployed one."""
    from otterlite.cli import main
    from otterlite.container import read_container
    from otterlite.images import load_rgb, psnr, sample_photo

    photo = tmp_path / "p.png"
    from PIL import Image
    Image.fromarray(load_rgb(sample_photo("astronaut.png"))[100:303, 50:292]).save(photo)  # 242x203: padded to 8
    models = tmp_path / "models"
    assert main(["export", "walloc-encoder", "seaotter-forward", "seaotter-inverse", "--format", "onnx,tflite",
                 "-o", str(models)]) == 0
    outputs = {}
    from otterlite.firmware_sim import host

    for runtime in ("numpy", "onnx", "tflite", "torch", *(["c"] if host.find_compiler() else [])):
        out = tmp_path / f"{runtime}.otl"
        assert main(["encode", str(photo), "-o", str(out), "--codec", "walloc", "--models", str(models),
                     "--runtime", runtime]) == 0
        outputs[runtime] = out.read_bytes()
    assert len(set(outputs.values())) == 1
    assert "webp layout would be" in capsys.readouterr().out
    assert main(["encode", str(photo), "-o", str(tmp_path / "w.otl"), "--codec", "walloc", "--latent-coder", "webp",
                 "--models", str(models)]) == 0
    rice, webp = read_container(outputs["numpy"]), read_container((tmp_path / "w.otl").read_bytes())
    assert rice.codec == webp.codec == "WaLLoC" and (rice.latents[0] == webp.latents[0]).all()
    assert main(["encode", str(photo), "-o", str(tmp_path / "f.otl"), "--codec", "walloc", "--runtime", "float"]) == 0
    floats = read_container((tmp_path / "f.otl").read_bytes()).latents[0].astype(int)
    assert np.abs(floats - rice.latents[0]).max() <= 1 and (floats == rice.latents[0]).mean() > 0.98
    assert main(["info", str(tmp_path / "w.otl")]) == 0
    assert "codec WaLLoC, latent coder webp" in capsys.readouterr().out
    jpgs = []
    for name in ("numpy.otl", "w.otl"):
        jpg = tmp_path / f"{name}.jpg"
        assert main(["transcode", str(tmp_path / name), "-o", str(jpg), "--models", str(models)]) == 0
        jpgs.append(jpg.read_bytes())
    assert jpgs[0] == jpgs[1]
    assert main(["decode", str(tmp_path / "numpy.otl.jpg"), "-o", str(tmp_path / "d.png"), "--models", str(models)]) == 0
    final = load_rgb(tmp_path / "d.png")
    assert final.shape == (203, 242, 3) and psnr(load_rgb(photo), final) > 18
    assert rice.latents[0].shape == (12, 26, 31)  # edge-padded to 248x208
    capsys.readouterr()
    assert main(["encode", str(photo), "-o", str(tmp_path / "x.otl"), "--codec", "walloc", "--n-ch", "3"]) == 2
    assert main(["encode", str(photo), "-o", str(tmp_path / "x.otl"), "--latent-coder", "webp"]) == 2
    err = capsys.readouterr().err
    assert "--n-ch applies to FRAPPE" in err and "--latent-coder webp" in err
    assert not (tmp_path / "x.otl").exists()
