"""Hostile input: a seeded mutation fuzzer (bytes flipped, overwritten, inserted, deleted,
spans duplicated, files cut short) on every reader the CLI uses, seeded with real artifacts;
only OtterliteError may escape, no reader may allocate more than MEMORY_LIMIT of address
space, and every crash input found is replayed from tests/fuzz_cases/.

Time per reader in the suite: OTTERLITE_FUZZ_SECONDS (default 3). A long run, by count,
two readers at a time, printing count, time and rate per reader:
    python tests/test_fuzz.py --count 1000000 [READER ...]
"""
import hashlib
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # published.py, when run as a script

from otterlite.cli import main  # noqa: E402
from otterlite.container import read_container, write_container  # noqa: E402
from otterlite.errors import OtterliteError  # noqa: E402
from otterlite.export import export, read_manifest  # noqa: E402
from otterlite.export.tflite_info import read_tflite  # noqa: E402
from otterlite.info import describe  # noqa: E402
from otterlite.models.jpeg import open_codec_jpeg  # noqa: E402
from otterlite.runtime import (ConsumerDecoder, apply_forward, apply_inverse, load_encoder_spec,  # noqa: E402
                               load_inverse_spec)
from otterlite.integer_spec.types import load_spec  # noqa: E402
from otterlite.workflow import encode_spec, transcode_file  # noqa: E402
from published import SMALL_FRAPPE, WALLOC_CONFIG, walloc_state, write_frappe, write_walloc  # noqa: E402

SECONDS = float(os.environ.get("OTTERLITE_FUZZ_SECONDS", "3"))
CASES = Path(__file__).with_name("fuzz_cases")
SPECIAL = (0, 1, 0x7F, 0x80, 0xFF)
FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # the readers' files: RAM is 15x faster here
FUZZ_FRAPPE = {**SMALL_FRAPPE, "ps": [16, 8], "decoder_ps": 8, "decoder_dim": 8, "decoder_arch": "C", "n_trained": 2}
MEMORY_LIMIT = 1 << 30  # bytes of address space a reader may add: a length field cannot buy gigabytes


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


def build_corpus(out: Path, photo: np.ndarray) -> Path:
    """Real artifacts in `out`: a 64x64 export (specs, ONNX, TFLite, manifest), a .otl, a SEA
    OTTER JPEG, and a small one-snapshot FRAPPE checkpoint in the published format."""
    export(["frappe-encoder", "walloc-encoder", "seaotter-inverse", "seaotter-forward"], ["onnx", "tflite"], out,
           input_size="64x64", say=lambda line: None)
    frame = encode_spec(load_encoder_spec(out), np.ascontiguousarray(photo[:64, :96]), "numpy")
    (out / "a.otl").write_bytes(write_container(frame))
    transcode_file(out / "a.otl", out / "a.jpg", models=str(out))
    write_frappe(out / "frappe-checkpoint", FUZZ_FRAPPE, snapshots=[2])  # a small file: fast mutations
    walloc = walloc_state(WALLOC_CONFIG)
    write_walloc(out / "walloc-checkpoint", state={k: v for k, v in walloc.items() if not k.startswith("decoder.")})
    return out


@pytest.fixture(scope="module")
def corpus(photo):
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        yield build_corpus(Path(tmp), photo)


def run_spec_blob(data: bytes) -> None:
    """Load a spec and run it on a tiny frame with the numpy runtime, as encode / decode would."""
    spec = load_spec(data, "fuzzed.spec")
    image = np.full((5, 7, 3), 200, np.uint8)
    if spec.kind in ("frappe-encoder", "walloc-encoder"):
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

    def checkpoint_file(seed_folder: Path, name: str, load):
        """A checkpoint folder with one file replaced, loaded as `otterlite export` does."""
        folder = corpus / f"{seed_folder.name}-{name}-fuzz"  # one per reader: readers run in parallel
        folder.mkdir(exist_ok=True)
        for f in seed_folder.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())

        def read(data: bytes) -> None:
            (folder / name).write_bytes(data)
            load(str(folder))
        return read, seed_folder / name

    from otterlite.models.checkpoint import load_frappe, load_seaotter, load_walloc

    frappe, walloc = corpus / "frappe-checkpoint", corpus / "walloc-checkpoint"
    return {
        "walloc-config": checkpoint_file(walloc, "RGB_16x.json", lambda f: load_walloc(f, with_decoder=False)),
        "walloc-pth": checkpoint_file(walloc, "RGB_16x.pth", lambda f: load_walloc(f, with_decoder=False)),
        "spec-walloc": (run_spec_blob, corpus / "walloc-encoder.spec"),
        "seaotter-config": checkpoint_file(DEFAULT_SEAOTTER, "config.json", load_seaotter),
        "seaotter-safetensors": checkpoint_file(DEFAULT_SEAOTTER, "seaotter_jpeg_pytorch_model.safetensors",
                                                load_seaotter),
        "frappe-config": checkpoint_file(frappe, "config.json", lambda f: load_frappe(f, n_ch=2)),
        "frappe-safetensors": checkpoint_file(frappe, "FRAPPE_pytorch_model.safetensors",
                                              lambda f: load_frappe(f, n_ch=2)),
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


READERS = ("spec-encoder", "spec-walloc", "spec-inverse", "spec-forward", "otl", "jpeg", "manifest", "tflite", "onnx",
           "seaotter-config", "seaotter-safetensors", "frappe-config", "frappe-safetensors", "walloc-config",
           "walloc-pth")
DEFAULT_SEAOTTER = Path(__file__).resolve().parents[1] / "otterlite" / "models" / "defaults" / "seaotter"


def address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextmanager
def memory_limit(extra: int):
    """Cap this process's address space at its current size plus `extra` bytes: an
    unbounded allocation anywhere (numpy, protobuf, torch) fails with MemoryError."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fuzz(name: str, table: dict, seconds: float | None = None, count: int | None = None):
    """Mutate reader `name`'s seed until `seconds` pass or `count` inputs ran; keep every
    distinct crash input in CASES. -> (inputs run, {crash: input})."""
    read, seed_file = table[name]
    seed = seed_file.read_bytes()
    read(seed)  # the real artifact reads (and warms the reader's imports up)
    rng = np.random.default_rng(int.from_bytes(name.encode(), "little") % 2 ** 32)
    crashes, done, end = {}, 0, time.monotonic() + (seconds if seconds is not None else float("inf"))
    with memory_limit(MEMORY_LIMIT):
        while time.monotonic() < end and (count is None or done < count):
            data = mutate(rng, seed)
            done += 1
            try:
                read(data)
            except OtterliteError as err:
                if "\n" in str(err).strip():
                    crashes.setdefault(f"two-line error: {str(err)[:80]}", data)
            except Exception as err:  # a crash (MemoryError included): keep the input as a regression case
                crashes.setdefault(f"{type(err).__name__}: {str(err)[:80]}", data)
    for data in crashes.values():
        CASES.mkdir(exist_ok=True)
        (CASES / f"{name}-{hashlib.sha256(data).hexdigest()[:12]}.bin").write_bytes(data)
    return done, crashes


@pytest.mark.parametrize("name", READERS)
def test_fuzzed_readers_raise_only_otterlite_errors(corpus, name):
    done, crashes = fuzz(name, readers(corpus), seconds=SECONDS)
    assert not crashes, f"{len(crashes)} distinct crashes in {done} mutations: {list(crashes)[:5]}"
    assert done > 10 * SECONDS


def test_memory_limit_turns_a_huge_allocation_into_memory_error():
    """The guard the fuzzer runs under is real: 2 GB inside it fails, and the limit is lifted after."""
    with memory_limit(MEMORY_LIMIT):
        with pytest.raises(MemoryError):
            np.ones(2 << 30, np.uint8)
    assert np.ones(2 << 30, np.uint8)[-1] == 1


@pytest.mark.parametrize("side", [9000, 60000])  # over our limit; over Pillow's own (which raises in open)
def test_a_jpeg_declaring_too_many_pixels_is_refused_before_decoding(corpus, side):
    import struct

    data = bytearray((corpus / "a.jpg").read_bytes())
    at = data.index(b"\xff\xc0") + 5  # baseline SOF: length, precision, then height and width
    data[at:at + 4] = struct.pack(">HH", side, side)
    with memory_limit(64 << 20), pytest.raises(OtterliteError, match="consumer's limit of 67 MPx"):
        open_codec_jpeg(bytes(data), "big.jpg")


def test_kept_crash_inputs_now_raise_otterlite_errors(corpus):
    """Every input the fuzzer ever crashed a Python reader with (tests/fuzz_cases/READER-*.bin;
    the C harness replays its ppm-*.bin itself)."""
    table = readers(corpus)
    cases = sorted(c for c in CASES.glob("*.bin") if c.name.rsplit("-", 1)[0] in table) if CASES.is_dir() else []
    assert cases  # the onnx case found while writing this test, at least
    for case in cases:
        name = case.name.rsplit("-", 1)[0]
        try:
            with memory_limit(MEMORY_LIMIT):
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


@pytest.mark.parametrize("model,flag,file,cut", [
    ("frappe-encoder", "--checkpoint", "config.json", 20),
    ("frappe-encoder", "--checkpoint", "FRAPPE_pytorch_model.safetensors", 300),
    ("seaotter-inverse", "--seaotter-checkpoint", "config.json", 10),
    ("seaotter-inverse", "--seaotter-checkpoint", "seaotter_jpeg_pytorch_model.safetensors", 100)])
def test_cli_export_of_a_corrupted_checkpoint_is_one_line_and_exit_2(corpus, tmp_path, capsys, model, flag, file, cut):
    seed = corpus / "frappe-checkpoint" if model == "frappe-encoder" else DEFAULT_SEAOTTER
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in seed.iterdir():
        (folder / f.name).write_bytes(f.read_bytes()[:cut] if f.name == file else f.read_bytes())
    out = tmp_path / "out"
    assert main(["export", model, flag, str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otterlite: error:") and err.count("\n") == 1 and file in err, err
    assert not out.exists() or not any(out.iterdir())


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
    print(f"ppm: {count} inputs through the sanitized harness, no report")  # shown with -s, for long runs
    assert count > 5


def long_run(argv: list[str]) -> int:
    """python tests/test_fuzz.py --count N [--jobs J] [READER ...]: N mutations per reader,
    J readers at a time (default 2); prints count, seconds and rate per reader."""
    import argparse
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from otterlite.images import load_rgb, sample_photo

    parser = argparse.ArgumentParser(prog="python tests/test_fuzz.py", description=long_run.__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("readers", nargs="*", metavar="READER", help=f"default: all of {', '.join(READERS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.readers) - set(READERS))
    if unknown:
        parser.error(f"unknown reader {', '.join(unknown)}; choose from {', '.join(READERS)}")
    args.readers = args.readers or list(READERS)
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        corpus = build_corpus(Path(tmp), load_rgb(sample_photo("astronaut.png")))
        failed = 0
        spawn = multiprocessing.get_context("spawn")  # a fork of a process running torch's threads can hang
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            jobs = {name: pool.submit(timed_fuzz, corpus, name, args.count) for name in args.readers}
            for name, job in jobs.items():
                done, seconds, crashes = job.result()
                failed += bool(crashes)
                print(f"{name:22s} {done:>9,d} mutations  {seconds:7.0f} s  {done / seconds:8.0f}/s  "
                      f"{len(crashes)} crashes {list(crashes)[:3] if crashes else ''}", flush=True)
    return 1 if failed else 0


def timed_fuzz(corpus: Path, name: str, count: int):
    start = time.monotonic()
    done, crashes = fuzz(name, readers(corpus), count=count)
    return done, time.monotonic() - start, crashes


if __name__ == "__main__":
    sys.exit(long_run(sys.argv[1:]))
