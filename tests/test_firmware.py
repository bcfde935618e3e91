"""Firmware simulation: the generated C99 encoder, built with the host compiler (also with
sanitizers), bit-exact with the PyTorch integer reference, writing the same container bytes,
refusing bad input, and its resource report."""
import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest

import published
from otterlite.cli import main
from otterlite.container import LatentFrame, write_container
from otterlite.errors import OtterliteError
from otterlite.export import export
from otterlite.firmware_sim import build_host, cross, encode_c, generate, host, toolchains
from otterlite.firmware import reference_latents
from otterlite.firmware_report import frame_work
from otterlite.images import sample_photo
from otterlite.runtime import load_encoder_spec
from otterlite.verify import adversarial

pytestmark = pytest.mark.skipif(host.find_compiler() is None, reason="no C compiler")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw-models")
    export(["frappe-encoder", "seaotter-inverse"], ["onnx"], out, input_size="64x64", say=lambda line: None)
    return out


@pytest.fixture(scope="module")
def built(exported, tmp_path_factory):
    spec = load_encoder_spec(exported)
    folder = generate(spec, tmp_path_factory.mktemp("fw") / "src")
    return spec, build_host(folder), build_host(folder, sanitize=True)


_libraries = {}


def library_encoder(spec, folder):
    if folder not in _libraries:
        _libraries[folder] = host.LibraryEncoder(host.build_library(folder), spec)
    return _libraries[folder]


def test_library_refuses_a_frame_smaller_than_a_patch(built, photo):
    spec, binary, _ = built
    with pytest.raises(OtterliteError, match="at least the largest patch"):
        library_encoder(spec, binary.parent).encode(np.ascontiguousarray(photo[:16, :64]))


def frame_of(spec, rgb, latents):
    return LatentFrame(spec.source_sha256, rgb.shape[1], rgb.shape[0], [tuple(g) for g in spec.info["groups"]], latents)


@pytest.mark.parametrize("size", [(32, 32), (100, 75), (333, 250), (512, 512)])
def test_c_matches_reference_and_writes_the_same_container(built, photo, size):
    spec, binary, sanitized = built
    h, w = size
    rgb = np.ascontiguousarray(photo[:h, :w])
    want = reference_latents(spec, rgb)
    for b in (binary, sanitized):
        for a, z in zip(want, encode_c(b, spec, rgb)):
            np.testing.assert_array_equal(a, z)
        assert host.run_harness([str(b)], rgb, container=True) == write_container(frame_of(spec, rgb, want))
    library = library_encoder(spec, binary.parent)  # in process, through ctypes
    for z_rows, z_planes, a in zip(library.encode(rgb), library.encode(rgb.transpose(2, 0, 1), planar=True), want):
        np.testing.assert_array_equal(a, z_rows)
        np.testing.assert_array_equal(a, z_planes)


# the instruction-set variants of the patch kernel this host can run: the default (on x86 the
# widest the CPU has: AMX-INT8 for groups of at most 16 channels and 4 digit planes, else
# AVX-512 VNNI with 8-bit groups on the u8 x s8 bytes kernel, else AVX2), AVX-512 VNNI at most,
# AVX-512 without the bytes kernel, AVX2 at most, SSE2 alone, and plain C
KERNELS = [(), ("OTL_NO_AMX",), ("OTL_NO_VNNI8",), ("OTL_NO_AVX512",), ("OTL_NO_AVX2",), ("OTL_PORTABLE",)]


def test_amx_weight_tiles_hold_the_weights():
    """The AMX layout: int8 digit planes that add up to the weights (9 bits: 3 planes, 12 bits:
    17), P patches side by side (block-diagonal columns p C + c), E = 3KP rounded up to 4 in
    ceil(E / 64) tiles of E / chunks rounded up to 4 bytes, chunk q from value min(q width,
    E - width), each value of kernel row u in exactly one tile; weights in [-256, 255] whose
    two planes fit 16 columns as one tile of 2 P C columns, W = lo + 2 hi, lo = W mod 2."""
    from otterlite.firmware_sim.codegen import amx_layout, digit_planes
    rng = np.random.default_rng(3)
    for lo, hi, planes in [(-128, 127, 1), (-255, 255, 3), (-256, 254, 2), (-2047, 2047, 17)]:
        for k, channels, patches in [(4, 5, 3), (7, 5, 1), (8, 5, 2), (8, 3, 2), (16, 3, 1), (32, 5, 1), (57, 5, 1)]:
            w = rng.integers(lo, hi + 1, (channels, 3, k, k))
            w.flat[0], w.flat[1] = lo, hi
            split = digit_planes(w)
            assert len(split) == planes and (split.sum(axis=0) == w).all()
            assert split.min() >= -128 and split.max() <= 127
            layout, width, p, columns = amx_layout(w)
            pc = p * channels
            stacked = planes > 1 and 2 * pc <= 16 and hi <= 255
            assert p == patches and pc <= 16 and columns == (2 * pc if stacked else pc)
            assert layout.shape[1] == (1 if stacked else planes) and layout.shape[4] == columns
            assert layout.min() >= -128 and layout.max() <= 127
            end = -(-3 * k * p // 4) * 4
            chunks = -(-end // 64)
            assert width == -(-end // (4 * chunks)) * 4 <= 64 and layout.shape[2:4] == (chunks, width // 4)
            values = np.zeros((k, layout.shape[1], columns, end), np.int64)  # [u][plane][column][t]
            for q in range(layout.shape[2]):
                start = min(width * q, end - width)
                tile = layout[:, :, q].transpose(0, 1, 3, 2, 4).reshape(k, layout.shape[1], columns, width)
                assert not tile[..., :width * q - start].any()  # no value twice: the overlap of the last tile is zero
                values[..., start:start + width] += tile
            want = np.zeros((k, pc, end), np.int64)
            for i in range(p):  # patch i's weights in its columns and values only
                want[:, channels * i:channels * (i + 1), 3 * k * i:3 * k * (i + 1)] = \
                    w.transpose(2, 0, 3, 1).reshape(k, channels, 3 * k)
            if stacked:  # lo in columns 0 .. PC - 1 (0 or 1), hi beside them
                assert set(np.unique(values[:, 0, :pc])) <= {0, 1}
                assert (values[:, 0, :pc] + 2 * values[:, 0, pc:] == want).all()
            else:
                assert (values.sum(axis=1) == want).all()


def test_packed_pairs_fill_every_lane():
    """The AVX-512 pairs kernel's 3-channel layout: block j lane l holds channel (4j + l) mod 3's
    pairs (four patches' 12 sums in three blocks); only where it stays within PACKED_MAX_BYTES
    (the default 8x8 group, not 32x32), never for other channel counts."""
    from otterlite.firmware_sim.codegen import PACKED_MAX_BYTES, packed_layout, pair_layout
    rng = np.random.default_rng(5)
    w = rng.integers(-256, 256, (3, 3, 8, 8))
    packed, one = packed_layout(w), pair_layout(w)  # [u][block][pair][lane][2]
    assert packed.shape == (8, 3, *one.shape[2:]) and 2 * packed.size <= PACKED_MAX_BYTES
    for j in range(3):
        for lane in range(4):
            np.testing.assert_array_equal(packed[:, j, :, lane], one[:, 0, :, (4 * j + lane) % 3])
    assert packed_layout(rng.integers(-256, 256, (3, 3, 32, 32))) is None
    assert packed_layout(rng.integers(-256, 256, (6, 3, 8, 8))) is None


@pytest.mark.parametrize("defines", KERNELS)
def test_sanitized_build_is_clean_on_the_adversarial_set(built, defines):
    spec, _, _ = built
    sanitized = build_host(built[1].parent, sanitize=True, defines=defines)
    for name, x in adversarial(spec, 96, 160):
        rgb = np.ascontiguousarray(x[0].transpose(1, 2, 0))
        want = reference_latents(spec, rgb)
        for a, z in zip(want, encode_c(sanitized, spec, rgb)):  # the frame in memory: otl_push_rows
            assert np.array_equal(a, z), name
        if name.startswith("noise"):  # rows streamed: otl_push_row
            container = host.run_harness([str(sanitized)], rgb, container=True)
            assert container == write_container(frame_of(spec, rgb, want)), name
    wide = np.random.default_rng(5).integers(0, 256, (64, 1568, 3), dtype=np.uint8)  # 3 AMX tiles of the 32x32 group
    for a, z in zip(reference_latents(spec, wide), encode_c(sanitized, spec, wide)):
        np.testing.assert_array_equal(a, z)


@pytest.mark.parametrize("bits", [12, 9])
def test_published_checkpoint_with_wide_weights_and_patch_4(tmp_path, odd_photo, bits):
    """Six patch sizes down to 4 (dot products of other lengths than 24/48/96) and 12-bit
    weights (17 digit planes: no AMX layout) or 9-bit ones (on AMX both planes W = lo + 2 hi
    side by side in one tile's columns; WaLLoC's 12 channels keep one TDPBUSD per plane)."""
    frappe_dir = published.write_frappe(tmp_path / "f", snapshots=[6], realistic=True)
    assert main(["export", "frappe-encoder", "-o", str(tmp_path / "m"), "--checkpoint", str(frappe_dir),
                 "--n-ch", "6", "--weight-bits", str(bits), "--input-size", "64x64"]) == 0
    spec = load_encoder_spec(tmp_path / "m")
    assert max(s.weight_bits for s in spec.stages) > 8
    folder = generate(spec, tmp_path / "src")
    for defines in KERNELS:
        sanitized = build_host(folder, sanitize=True, defines=defines)
        for a, z in zip(reference_latents(spec, odd_photo), encode_c(sanitized, spec, odd_photo)):
            np.testing.assert_array_equal(a, z)


def test_firmware_commands_report_and_run(exported, tmp_path, capsys):
    out = tmp_path / "fw"
    assert main(["firmware", str(exported), "--target", "cortex-m4,rpi4", "-o", str(out),
                 "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "cortex-m4" in printed and "fps (model)" in printed and "TFLM arena" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == json.loads((out / "report.json").read_text())
    assert set(report["targets"]) == {"cortex-m4", "rpi4"}
    spec = load_encoder_spec(exported)
    frame = report["frames"]["1920x1080"]
    # the C's own figure against the spec: one int32 accumulator row per group, 3 spare int32
    # (OTL_LANE_SLACK) and one latent row
    widths = [(s.weights.shape[0], 1920 // s.stride) for s in spec.stages]
    assert frame["state_bytes"] == sum(4 * c * w for c, w in widths) + 4 * 3 + max(c * w for c, w in widths)
    assert frame["macs"] == frame_work(spec, 1080, 1920)["macs"] == 1920 * 1088 * 3 * 12
    assert report["host"]["c_mpx_s"] > 0
    m4 = report["targets"]["cortex-m4"]
    if m4["build"]["measured"]:
        assert m4["build"]["constants"] >= sum(s.weights.size + 4 * 256 * s.weights.shape[0] for s in spec.stages)
    photos = [str(sample_photo("astronaut.png")), str(sample_photo("rocket.jpg"))]
    assert main(["firmware", "run", str(out), *photos]) == 0
    assert capsys.readouterr().out.count("exact, container bytes identical") == 2


def test_verify_c_backend(exported):
    from otterlite.verify import verify

    report = verify(exported, backends=["c"], say=lambda line: None, with_fidelity=False)
    assert [(r.model, r.status) for r in report.results] == [("frappe-encoder", "exact")]


def ppm_cases(rgb):
    good = f"P6\n{rgb.shape[1]} {rgb.shape[0]}\n255\n".encode() + rgb.tobytes()
    return {
        "not-ppm": b"P3\n64 64\n255\n" + rgb.tobytes(),
        "truncated": good[:-100],
        "16-bit": good.replace(b"\n255\n", b"\n65535\n", 1),
        "too-small": b"P6\n8 8\n255\n" + bytes(8 * 8 * 3),
        "no-size": b"P6\nxx yy\n255\n",
        "empty": b"",
    }


def test_harness_refuses_malformed_ppm_without_output(built, tmp_path, photo):
    _, binary, sanitized = built
    for name, data in ppm_cases(np.ascontiguousarray(photo[:64, :64])).items():
        (tmp_path / "in.ppm").write_bytes(data)
        for b in (binary, sanitized):
            for extra in ([], ["--container"]):
                done = subprocess.run([str(b), *extra, "in.ppm", "out.bin"], cwd=tmp_path, capture_output=True,
                                      text=True)
                assert done.returncode != 0 and "otl_host:" in done.stderr, (name, done.stderr)
                assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ppm"], name


def test_bad_input_messages(exported, tmp_path, capsys, monkeypatch):
    assert main(["firmware", str(exported), "--target", "pdp-11", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pdp-11" in err and "cortex-m4" in err and "rpi4" in err
    assert not (tmp_path / "x").exists()
    assert main(["firmware", str(exported / "seaotter-inverse.spec"), "-o", str(tmp_path / "x")]) == 2
    assert "not a FRAPPE encoder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(OtterliteError, match="no C compiler found"):
        build_host(generate(load_encoder_spec(exported), tmp_path / "y"))
    assert main(["firmware", "run", str(tmp_path / "y"), str(sample_photo("astronaut.png"))]) == 2
    assert "no C compiler found" in capsys.readouterr().err


# --- cross builds under QEMU (firmware_sim.cross) ---------------------------------------

def require_cross(name):
    from test_export_verify import require

    require(f"qemu-{name}")
    return toolchains.CROSS[name]


def test_make_cross_builds_the_contract_binaries(built, tmp_path, photo):
    """`make -C OUT cross` builds every cross binary; the Cortex-M ELF under QEMU (semihosting
    arguments IN.ppm OUT.bin) and otl_aarch64 under qemu-user write otl_host's bytes."""
    spec, binary, _ = built
    for name in toolchains.CROSS:
        require_cross(name)
    folder = generate(spec, tmp_path / "src")
    done = subprocess.run(["make", "-C", str(folder), "cross"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rgb = np.ascontiguousarray(photo[:150, :200])
    want = host.run_harness([str(binary)], rgb)
    m4, a64 = toolchains.CROSS["cortex-m4"], toolchains.CROSS["aarch64"]
    qemu_m4 = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-display", "none", "-serial", "none",
               "-monitor", "none", "-kernel", str(folder / "otl_cortex-m4.elf"), "-semihosting-config"]
    assert host.run_harness(lambda args: [*qemu_m4, "enable=on,target=native,arg=otl," +
                                          ",".join(f"arg={a}" for a in args)], rgb) == want
    assert host.run_harness(["qemu-aarch64", "-cpu", "cortex-a72", str(folder / "otl_aarch64")], rgb) == want
    assert host.run_harness(["qemu-aarch64", "-cpu", "cortex-a72", str(folder / "otl_aarch64")], rgb,
                            container=True) == host.run_harness([str(binary)], rgb, container=True)
    for t in (m4, a64):
        assert cross.section_sizes(t, folder / t.binary_name)["text"] > 0


def test_cortex_m_harness_refuses_malformed_ppm(built, tmp_path, photo):
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    elf = cross.build_cross(generate(spec, tmp_path / "src"), m4)
    for name, data in ppm_cases(np.ascontiguousarray(photo[:64, :64])).items():
        work = tmp_path / name
        work.mkdir()
        (work / "in.ppm").write_bytes(data)
        done = subprocess.run(cross.emulator_command(m4, elf, ["in.ppm", "out.bin"]), cwd=work, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1 and "otl:" in done.stdout + done.stderr, (name, done.stdout, done.stderr)
        assert sorted(p.name for p in work.iterdir()) == ["in.ppm"], name


def test_model_too_large_for_the_part_is_a_one_line_error(built, tmp_path):
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    tiny = dataclasses.replace(m4, flash=(m4.flash[0], 16 * 1024), ram=(m4.ram[0], 8 * 1024))
    folder = generate(spec, tmp_path / "src")
    (folder / "cortex-m4.ld").write_text(toolchains.linker_script(tiny))
    with pytest.raises(OtterliteError) as err:
        cross.build_cross(folder, tiny)
    message = str(err.value)
    assert "\n" not in message and "does not fit" in message
    assert re.search(r"FLASH overflowed by \d+ bytes \(the part has 16384\)", message)
    assert re.search(r"RAM overflowed by \d+ bytes \(the part has 8192\)", message)


def test_default_encoder_fits_the_cortex_m4_part(built, tmp_path):
    """The 12-channel encoder links with the real 512 KB flash / 128 KB RAM of the part."""
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    assert spec.stages[-1].channels[1] == 12 and m4.flash[1] == 512 * 1024 and m4.ram[1] == 128 * 1024
    elf = cross.build_cross(generate(spec, tmp_path / "src"), m4)
    sizes = cross.section_sizes(m4, elf)
    assert sizes["text"] + sizes["data"] <= m4.flash[1] and sizes["data"] + sizes["bss"] <= m4.ram[1]


def test_hung_emulator_and_missing_toolchain(built, tmp_path, photo, monkeypatch):
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    elf = cross.build_cross(generate(spec, tmp_path / "src"), m4)
    with pytest.raises(OtterliteError, match="no exit after"):
        cross.run_cross(m4, elf, np.ascontiguousarray(photo), timeout=0.01)
    monkeypatch.setattr(toolchains.shutil, "which", lambda tool: None)
    with pytest.raises(OtterliteError, match="gcc-arm-none-eabi"):
        cross.build_cross(tmp_path / "src", m4)
    from otterlite.backends import BACKENDS

    assert "apt-get install gcc-aarch64-linux-gnu" in BACKENDS["qemu-aarch64"].missing()


def test_instruction_counts_are_repeatable_and_scale_with_pixels(built, tmp_path, photo):
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    elf = cross.build_cross(generate(spec, tmp_path / "src"), m4)
    plugin = cross.build_plugin(tmp_path)
    small, big = np.ascontiguousarray(photo[:64, :128]), np.ascontiguousarray(photo[:128, :128])
    a, b = (cross.count_instructions(m4, elf, small, plugin) for _ in range(2))
    c = cross.count_instructions(m4, elf, big, plugin)
    assert a == b and 0 < a["encoder"] < a["program"]
    assert 1.9 < c["encoder"] / a["encoder"] < 2.1  # twice the rows, twice the encoder work


def test_a_fault_on_the_cortex_m_is_reported_as_a_fault(built, tmp_path, photo):
    """An undefined instruction in place of the harness: the start-up's fault handler exits
    with its fault code, and run_cross says the program faulted."""
    spec, _, _ = built
    m4 = require_cross("cortex-m4")
    folder = generate(spec, tmp_path / "src")
    (folder / "fault.c").write_text("int main(void) { __asm__ volatile(\"udf #0\"); return 0; }\n")
    flags = [*m4.cflags, "-std=c99", "-c"]
    subprocess.run([m4.compiler, *flags, "fault.c", "-o", "fault.o"], cwd=folder, check=True)
    subprocess.run([m4.compiler, *flags, "-Dmain=harness_main", "otl_semihost.c", "-o", "semihost.o"], cwd=folder,
                   check=True)
    subprocess.run([m4.compiler, *m4.cflags, "-Wl,--gc-sections", "-Tcortex-m4.ld", "-o", "fault.elf", "fault.o",
                    "semihost.o", "otl_startup.c", *toolchains.LIBRARY, "-lc", "-lgcc"], cwd=folder, check=True)
    with pytest.raises(OtterliteError, match="faulted under QEMU"):
        cross.run_cross(m4, folder / "fault.elf", np.ascontiguousarray(photo[:64, :64]))


def test_verify_shows_a_backend_that_cannot_run_as_an_error_cell(tmp_path):
    """Frames wider than the Cortex-M harness's static buffer: the cell says why, verify fails."""
    from otterlite.verify import verify

    require_cross("cortex-m4")
    export(["frappe-encoder"], ["onnx"], tmp_path, input_size="64x2048", say=lambda line: None)
    report = verify(tmp_path, backends=["qemu-cortex-m4", "c"], say=lambda line: None, with_fidelity=False)
    cells = {r.backend: r.status for r in report.results}
    assert cells["c"] == "exact"
    assert cells["qemu-cortex-m4"].startswith("error:") and "OTL_MCU_MAX_WIDTH" in cells["qemu-cortex-m4"]
    assert not report.exact
