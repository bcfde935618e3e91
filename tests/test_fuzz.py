"""Hostile input: a seeded mutation fuzzer (bytes flipped, overwritten, inserted, deleted,
spans duplicated, files cut short) on every reader the CLI uses, seeded with real artifacts;
only OtterliteError may escape, and every crash input found is replayed from tests/fuzz_cases/.

Time per reader: OTTERLITE_FUZZ_SECONDS (default 3). A long run:
    OTTERLITE_FUZZ_SECONDS=600 python -m pytest -q tests/test_fuzz.py
"""
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from otterlite.cli import main
from otterlite.container import read_container
from otterlite.errors import OtterliteError
from otterlite.export import export, read_manifest
from otterlite.export.tflite_info import read_tflite
from otterlite.info import describe
from otterlite.models.jpeg import open_codec_jpeg
from otterlite.runtime import ConsumerDecoder, apply_forward, apply_inverse, load_inverse_spec
from otterlite.spec.types import load_spec
from otterlite.workflow import encode_spec, transcode_file

SECONDS = float(os.environ.get("OTTERLITE_FUZZ_SECONDS", "3"))
CASES = Path(__file__).with_name("fuzz_cases")
SPECIAL = (0, 1, 0x7F, 0x80, 0xFF)


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One to three random edits of `data`."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 6))
        at = int(rng.integers(0, len(out) + 1))
        span = int(rng.integers(1, 9))
        if kind == 0 and out:  # flip bits
            for i in rng.integers(0, len(out), span):
                out[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # overwrite with special bytes (length fields, signs)
            out[at:at + span] = bytes(int(rng.choice(SPECIAL)) for _ in range(span))
        elif kind == 2:
            out[at:at] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
        elif kind == 3:
            del out[at:at + span * int(rng.integers(1, 64))]
        elif kind == 4:
            out = out[:at]
        else:
            out[at:at] = out[at:at + span * 16]
    return bytes(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photo):
    """Real artifacts: a 64x64 export (specs, ONNX, TFLite, manifest), a .otl and a SEA OTTER JPEG."""
    out = tmp_path_factory.mktemp("fuzz")
    export(["frappe-encoder", "seaotter-inverse", "seaotter-forward"], ["onnx", "tflite"], out, input_size="64x64",
           say=lambda line: None)
    from otterlite.container import write_container
    from otterlite.runtime import load_encoder_spec

    frame = encode_spec(load_encoder_spec(out), np.ascontiguousarray(photo[:64, :96]), "numpy")
    (out / "a.otl").write_bytes(write_container(frame))
    transcode_file(out / "a.otl", out / "a.jpg", models=str(out))
    return out


def run_spec_blob(data: bytes) -> None:
    """Load a spec and run it on a tiny frame with the numpy runtime, as encode / decode would."""
    spec = load_spec(data, "fuzzed.spec")
    image = np.full((5, 7, 3), 200, np.uint8)
    if spec.kind == "frappe-encoder":
        if spec.largest_stride <= 64:
            encode_spec(spec, np.zeros((64, 64, 3), np.uint8), "numpy")
    elif spec.kind == "seaotter-inverse":
        apply_inverse(spec, image)  # the formula decode runs (the 2^24 table would cost a second per input)
    else:
        apply_forward(spec, image)


def readers(corpus):
    inverse = ConsumerDecoder(load_inverse_spec(corpus), table=False)

    def manifest(data: bytes) -> None:
        folder = corpus / "manifest-fuzz"
        folder.mkdir(exist_ok=True)
        (folder / "manifest.json").write_bytes(data)
        read_manifest(folder)
        describe(folder / "manifest.json")

    def onnx_info(data: bytes) -> None:
        path = corpus / "fuzz.onnx"
        path.write_bytes(data)
        describe(path)
    def seaotter_file(name: str):
        """A SEA OTTER checkpoint folder with one file replaced, loaded as `otterlite export` does."""
        def read(data: bytes) -> None:
            from otterlite.models.checkpoint import load_seaotter

            folder = corpus / "seaotter-fuzz"
            folder.mkdir(exist_ok=True)
            for f in DEFAULT_SEAOTTER.iterdir():
                (folder / f.name).write_bytes(data if f.name == name else f.read_bytes())
            load_seaotter(str(folder))
        return read
    return {
        "seaotter-config": (seaotter_file("config.json"), DEFAULT_SEAOTTER / "config.json"),
        "seaotter-safetensors": (seaotter_file("seaotter_jpeg_pytorch_model.safetensors"),
                                 DEFAULT_SEAOTTER / "seaotter_jpeg_pytorch_model.safetensors"),
        "spec-encoder": (run_spec_blob, corpus / "frappe-encoder.spec"),
        "spec-inverse": (run_spec_blob, corpus / "seaotter-inverse.spec"),
        "spec-forward": (run_spec_blob, corpus / "seaotter-forward.spec"),
        "otl": (lambda d: read_container(d, "fuzzed.otl"), corpus / "a.otl"),
        "jpeg": (lambda d: (open_codec_jpeg(d, "fuzzed.jpg"), inverse.decode(d, "fuzzed.jpg", force=True)),
                 corpus / "a.jpg"),
        "manifest": (manifest, corpus / "manifest.json"),
        "tflite": (lambda d: read_tflite(d, "fuzzed.tflite"), corpus / "seaotter-inverse.tflite"),
        "onnx": (onnx_info, corpus / "frappe-encoder.onnx"),
    }


READERS = ("spec-encoder", "spec-inverse", "spec-forward", "otl", "jpeg", "manifest", "tflite", "onnx",
           "seaotter-config", "seaotter-safetensors")
DEFAULT_SEAOTTER = Path(__file__).resolve().parents[1] / "otterlite" / "models" / "defaults" / "seaotter"


@pytest.mark.parametrize("name", READERS)
def test_fuzzed_readers_raise_only_otterlite_errors(corpus, name):
    read, seed_file = readers(corpus)[name]
    seed = seed_file.read_bytes()
    read(seed)  # the real artifact reads
    rng = np.random.default_rng(int.from_bytes(name.encode(), "little") % 2 ** 32)
    crashes, count, end = {}, 0, time.monotonic() + SECONDS
    while time.monotonic() < end:
        data = mutate(rng, seed)
        count += 1
        try:
            read(data)
        except OtterliteError as err:
            assert "\n" not in str(err).strip(), err  # one line
        except Exception as err:  # a crash: keep the input as a regression case
            key = f"{type(err).__name__}: {str(err)[:80]}"
            if key not in crashes:
                crashes[key] = data
                CASES.mkdir(exist_ok=True)
                (CASES / f"{name}-{hashlib.sha256(data).hexdigest()[:12]}.bin").write_bytes(data)
    assert not crashes, f"{len(crashes)} distinct crashes in {count} mutations: {list(crashes)[:5]}"
    assert count > 10 * SECONDS


def test_kept_crash_inputs_now_raise_otterlite_errors(corpus):
    """Every input the fuzzer ever crashed a Python reader with (tests/fuzz_cases/READER-*.bin;
    the C harness replays its ppm-*.bin itself)."""
    table = readers(corpus)
    cases = sorted(c for c in CASES.glob("*.bin") if c.name.rsplit("-", 1)[0] in table) if CASES.is_dir() else []
    assert cases  # the onnx case found while writing this test, at least
    for case in cases:
        name = case.name.rsplit("-", 1)[0]
        try:
            table[name][0](case.read_bytes())
        except OtterliteError:
            pass


@pytest.mark.parametrize("file,cut", [("frappe-encoder.spec", 40), ("seaotter-inverse.onnx", 100),
                                      ("seaotter-forward.tflite", 200), ("manifest.json", 30), ("a.otl", 50),
                                      ("a.jpg", 300)])
def test_cli_info_on_every_corrupted_artifact_kind_is_one_line_and_exit_2(corpus, tmp_path, capsys, file, cut):
    broken = tmp_path / file
    broken.write_bytes((corpus / file).read_bytes()[:cut])
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otterlite: error:") and err.count("\n") == 1, err


def test_encode_with_a_renamed_spec_key_is_one_line(corpus, tmp_path, capsys, photo):
    """The case issue 19 reported: one JSON key renamed in frappe-encoder.spec."""
    from PIL import Image

    folder = tmp_path / "m"
    folder.mkdir()
    data = (corpus / "frappe-encoder.spec").read_bytes().replace(b'"stride"', b'"strode"', 1)
    (folder / "frappe-encoder.spec").write_bytes(data)
    Image.fromarray(np.ascontiguousarray(photo[:64, :64])).save(tmp_path / "p.png")
    out = tmp_path / "x.otl"
    assert main(["encode", str(tmp_path / "p.png"), "-o", str(out), "--models", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "corrupted integer spec" in err and err.count("\n") == 1 and not out.exists()


def test_fuzzed_ppm_in_the_sanitized_c_harness(corpus, tmp_path, photo):
    """The generated C's PPM reader and encoder built with -fsanitize=address,undefined: every
    mutated PPM ends in exit 0 (encoded) or 1 (a message), never a sanitizer report or a crash."""
    import subprocess

    from otterlite.firmware_sim import build_host, generate
    from otterlite.firmware_sim.host import write_ppm
    from otterlite.runtime import load_encoder_spec

    binary = build_host(generate(load_encoder_spec(corpus), tmp_path / "fw"), sanitize=True)
    write_ppm(tmp_path / "seed.ppm", np.ascontiguousarray(photo[:64, :96]))
    seed = (tmp_path / "seed.ppm").read_bytes()
    env = {**os.environ, "ASAN_OPTIONS": "exitcode=99:detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98"}
    kept = sorted(CASES.glob("ppm-*.bin")) if CASES.is_dir() else []  # earlier crash inputs first
    rng, count, end = np.random.default_rng(19), 0, time.monotonic() + SECONDS
    while kept or time.monotonic() < end:
        data = kept.pop().read_bytes() if kept else mutate(rng, seed)
        (tmp_path / "in.ppm").write_bytes(data)
        done = subprocess.run([str(binary), str(tmp_path / "in.ppm"), str(tmp_path / "out.bin")], env=env,
                              capture_output=True, text=True, timeout=60)
        count += 1
        if done.returncode not in (0, 1) or "Sanitizer" in done.stderr or "runtime error" in done.stderr:
            CASES.mkdir(exist_ok=True)
            (CASES / f"ppm-{hashlib.sha256(data).hexdigest()[:12]}.bin").write_bytes(data)
            pytest.fail(f"exit {done.returncode} after {count} mutations: {done.stderr[-400:]}")
    assert count > 5
