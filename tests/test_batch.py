"""`otterlite transcode-batch` on Ray Data, run locally: byte-identical to `transcode` per
file, bad containers recorded (and nothing else), a killed driver resumed to the same
outputs, Parquet in and out, and one-line refusals of bad input."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("OTTERLITE_REQUIRE_ALL_BACKENDS") != "1":  # CI installs otterlite[all]: there ray must be present
    pytest.importorskip("ray")

from otterlite.batch import FAILURES, transcode_batch  # noqa: E402
from otterlite.cli import main  # noqa: E402
from otterlite.container import write_container  # noqa: E402
from otterlite.export import export  # noqa: E402
from otterlite.images import load_rgb, sample_photo  # noqa: E402
from otterlite.runtime import load_encoder_spec  # noqa: E402
from otterlite.workflow import encode_spec, transcode_file  # noqa: E402

GOOD = 30


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A forward-transform export, GOOD 64x64 containers in nested folders, and bad ones:
    truncated, junk, a flipped payload byte (CRC), and one that records another checkpoint."""
    root = tmp_path_factory.mktemp("fleet")
    export(["frappe-encoder", "seaotter-forward"], ["onnx"], root / "models", input_size="64x64",
           say=lambda line: None)
    spec = load_encoder_spec(root / "models")
    src = root / "src"
    frames = []
    for i in range(GOOD):
        photo = load_rgb(sample_photo(["astronaut.png", "coffee.png", "chelsea.png"][i % 3]))
        y, x = (i * 37) % (photo.shape[0] - 64), (i * 53) % (photo.shape[1] - 64)
        frames.append(encode_spec(spec, np.ascontiguousarray(photo[y:y + 64, x:x + 64]), "numpy"))
        path = src / f"cam{i % 4}" / f"frame{i:03d}.otl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(write_container(frames[-1]))
    good = write_container(frames[0])
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    frames[1].checkpoint_sha256 = "ab" * 32
    bad = {"bad/truncated.otl": good[:40], "bad/junk.otl": b"not a container at all", "bad/crc.otl": bytes(flipped),
           "bad/other-checkpoint.otl": write_container(frames[1])}
    for name, data in bad.items():
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(data)
    return root, src, sorted(str(src / n) for n in bad)


def failures(out: Path) -> dict[str, str]:
    lines = (out / FAILURES).read_text().splitlines()
    assert lines[0] == "input\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


@pytest.fixture(scope="module")
def batch_run(fleet):
    root, src, _ = fleet
    out = root / "out"
    summary = transcode_batch(str(src), out, k=1, models=str(root / "models"), workers=2, batch_size=4,
                              say=lambda line: None)
    return out, summary


def test_batch_output_is_byte_identical_to_transcode_and_failures_are_the_bad_inputs(fleet, batch_run, tmp_path):
    root, src, bad = fleet
    out, summary = batch_run
    assert (summary.done, summary.failed, summary.skipped) == (GOOD, len(bad), 0)
    jpegs = sorted(out.rglob("*.jpg"))
    assert len(jpegs) == GOOD
    for jpg in jpegs:
        name = jpg.relative_to(out).with_suffix(".otl")
        single = transcode_file(src / name, tmp_path / "one.jpg", k=1, models=str(root / "models"))
        assert jpg.read_bytes() == single.path.read_bytes(), name
    found = failures(out)
    assert sorted(found) == bad
    assert "CRC mismatch" in found[str(src / "bad/crc.otl")]
    assert "encoded with FRAPPE checkpoint abababababab" in found[str(src / "bad/other-checkpoint.otl")]


def kill_ray_left_by(pid: int) -> None:
    """Ray 2.60 leaves its dashboard and runtime-env agents behind when the driver that started
    it is SIGKILLed (what `ray stop` would clean up): stop those of this driver's session only."""
    for proc in Path("/proc").iterdir():
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and any(f"_{pid}/logs/" in link for link in links):
            os.kill(int(proc.name), signal.SIGKILL)


def test_a_killed_driver_resumes_to_the_same_outputs(fleet, batch_run, tmp_path):
    """Kill the driver (SIGKILL) once a few outputs exist; the re-run skips them and ends with
    the outputs and failures of the uninterrupted run."""
    root, src, bad = fleet
    reference, _ = batch_run
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "otterlite", "transcode-batch", str(src), str(out), "--k", "1", "--models",
            str(root / "models"), "--workers", "1", "--batch-size", "1"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*.jpg"))) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, "the run ended before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    kill_ray_left_by(driver.pid)
    written = len(list(out.rglob("*.jpg")))
    assert 3 <= written < GOOD and not (out / FAILURES).exists()
    summary = transcode_batch(str(src), out, k=1, models=str(root / "models"), workers=2, batch_size=4,
                              say=lambda line: None)
    assert summary.skipped >= written and summary.done + summary.skipped == GOOD and summary.failed == len(bad)
    got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.jpg")}
    assert got == {p.relative_to(reference): p.read_bytes() for p in reference.rglob("*.jpg")}
    assert failures(out) == failures(reference)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_parquet_shards_in_and_out(fleet, batch_run, tmp_path):
    """Containers in Parquet shards (name, container), JPEGs out in shards (name, jpeg): the
    same bytes as the file run; a bad row is a failure named shard:name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, src, _ = fleet
    reference, _ = batch_run
    names = sorted(str(p.relative_to(src).with_suffix("")) for p in src.rglob("*.otl") if "bad" not in p.parts)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate([names[:12], names[12:]]):
        rows = {"name": part, "container": [(src / f"{n}.otl").read_bytes() for n in part]}
        if i == 1:
            rows["name"] += ["broken", "../../escape"]
            rows["container"] += [b"OTLF" + b"\0" * 20, rows["container"][0]]
        pq.write_table(pa.table(rows), shards / f"uploads-{i}.parquet")
    out = tmp_path / "out"
    summary = transcode_batch(str(shards), out, k=1, models=str(root / "models"), workers=2, batch_size=4,
                              fmt="parquet", say=lambda line: None)
    assert (summary.done, summary.failed) == (GOOD, 2)
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    got = dict(zip(table.column("name").to_pylist(), table.column("jpeg").to_pylist()))
    assert got == {n: (reference / f"{n}.jpg").read_bytes() for n in names}
    found = failures(out)
    assert sorted(found) == [f"{shards / 'uploads-1.parquet'}:{n}" for n in ("../../escape", "broken")]
    assert "not a relative path inside the output folder" in found[f"{shards / 'uploads-1.parquet'}:../../escape"]
    again = transcode_batch(str(shards), out, k=1, models=str(root / "models"), workers=1, fmt="parquet",
                            say=lambda line: None)
    assert (again.done, again.skipped, again.failed) == (0, GOOD, 2)


def expect_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otterlite: error:") and fragment in err and err.count("\n") == 1, err


def test_bad_input_is_one_line_and_exit_2(fleet, tmp_path, capsys, monkeypatch):
    root, src, _ = fleet
    models = ["--models", str(root / "models")]
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(capsys, ["transcode-batch", str(empty), str(tmp_path / "o1"), *models], "no .otl containers")
    expect_error(capsys, ["transcode-batch", str(tmp_path / "none-*.otl"), str(tmp_path / "o1"), *models],
                 "no .otl containers")
    blocker = tmp_path / "file"
    blocker.write_text("")
    expect_error(capsys, ["transcode-batch", str(src), str(blocker / "out"), *models], "is not a folder")
    expect_error(capsys, ["transcode-batch", str(src), str(tmp_path / "o2"), *models, "--k", "9"], "--k 9")
    expect_error(capsys, ["transcode-batch", str(src), str(tmp_path / "o2"), *models, "--workers", "0"],
                 "--workers 0")
    expect_error(capsys, ["transcode-batch", str(src), str(tmp_path / "o2"), *models, "--seaotter-checkpoint",
                          "default"], "not both")
    listing = tmp_path / "list.txt"
    listing.write_text("cam0/frame000.otl\nmissing.otl\n")
    expect_error(capsys, ["transcode-batch", str(listing), str(tmp_path / "o2"), *models], "do not exist")
    (empty / "a.otl").write_bytes(b"")
    (empty / "b.parquet").write_bytes(b"")
    expect_error(capsys, ["transcode-batch", str(empty), str(tmp_path / "o2"), *models], "one kind per run")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    expect_error(capsys, ["transcode-batch", str(src), str(tmp_path / "o3"), *models], "unreachable")
    monkeypatch.delenv("RAY_ADDRESS")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    expect_error(capsys, ["transcode-batch", str(src), str(tmp_path / "o4"), *models], "pip install 'otterlite[ray]'")


def test_a_list_file_names_outputs_by_path(fleet, tmp_path):
    """A list file: paths relative to it; names relative to the deepest common folder."""
    root, src, _ = fleet
    listing = src / "list.txt"
    listing.write_text("# two cameras\ncam1/frame001.otl\ncam2/frame002.otl\n")
    out = tmp_path / "out"
    try:
        summary = transcode_batch(str(listing), out, k=1, models=str(root / "models"), workers=1,
                                  say=lambda line: None)
    finally:
        listing.unlink()
    assert summary.done == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == ["cam1/frame001.jpg", "cam2/frame002.jpg"]


def test_the_frappe_decoder_does_not_depend_on_the_thread_count(photo):
    """With oneDNN on 1 and 2 threads, 6 of this frame's 786K decoded values differ; a batch
    worker (1 thread) and `transcode` (all cores) must give the same JPEG bytes."""
    import torch

    from otterlite.models.checkpoint import load_frappe
    from otterlite.workflow import decode_frame, deployed_spec

    spec, _ = deployed_spec("frappe-encoder", None)
    frame = encode_spec(spec, np.ascontiguousarray(photo), "numpy")
    model, _ = load_frappe(None, frame.n_ch)
    threads = torch.get_num_threads()
    try:
        decoded = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            decoded.append(decode_frame(model, frame))
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads and torch.backends.mkldnn.enabled
    np.testing.assert_array_equal(decoded[0], decoded[1])
    np.testing.assert_array_equal(decoded[0], decoded[2])
