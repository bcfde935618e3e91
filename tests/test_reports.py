"""verify's reports: divergence localisation on deliberately corrupted artifacts (one weight,
one threshold, one table entry, the bias, the divisor) on each runtime kind, JUnit XML
against the junit-10 schema, the HTML report rendered by headless Chromium, bad input."""
import base64
import copy
import dataclasses
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
from onnx import numpy_helper
from PIL import Image

from otterlite.backends import BACKENDS
from otterlite.cli import main
from otterlite.export import export
from otterlite.integer_spec import load_spec
from otterlite.reports import CHROMIUM, junit_xml
from otterlite.verify import verify
from test_export_verify import require

QUIET = dict(say=lambda line: None, with_fidelity=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The default encoder at 64x96 and the inverse at 512x512 (the all-colours set in 64 frames)."""
    root = tmp_path_factory.mktemp("reports")
    export(["frappe-encoder"], ["onnx", "tflite"], root / "enc", input_size="64x96", say=lambda line: None)
    export(["seaotter-inverse"], ["onnx", "tflite"], root / "inv", input_size="512x512", say=lambda line: None)
    return root


def only(folder: Path, out: Path, file: str) -> Path:
    """A copy of folder whose manifest lists only `file` (re-hashed after the caller edits it)."""
    shutil.copytree(folder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"] = [e for e in manifest["artifacts"] if e["file"] == file]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / file


def rehash(path: Path) -> None:
    """Record the edited file's hash in its manifest, as a miscompiled export would."""
    manifest = json.loads((path.parent / "manifest.json").read_text())
    for e in manifest["artifacts"]:
        if e["file"] == path.name:
            e["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


def edit_onnx(path: Path, name: str, change) -> None:
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == name:
            array = numpy_helper.to_array(init).copy()
            change(array)
            init.CopyFrom(numpy_helper.from_array(array, name))
            onnx.save(model, str(path))
            return rehash(path)
    raise AssertionError(f"no initializer {name}")


def edit_tflite(path: Path, name: str, change) -> None:
    """Change the constant tensor `name` in place in the flatbuffer."""
    data = bytearray(path.read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        buffer = model.Buffers(tensor.Buffer())
        if tensor.Name().decode() == name and buffer.DataLength():
            change(buffer.DataAsNumpy().view(dtypes[tensor.Type()]))  # a view into `data`
            path.write_bytes(bytes(data))
            return rehash(path)
    raise AssertionError(f"no constant tensor {name}")


def spread_threshold(spec) -> tuple[int, int]:
    """(j, d): a threshold of stage 0 channel 0 that the adversarial boundary images aim at,
    and a raise d that keeps the thresholds ascending."""
    stage = spec.stages[0]
    lo, hi = stage.accumulator_range()
    t = stage.thresholds[0]
    finite = [j for j in range(len(t)) if lo[0] < t[j] <= hi[0]]
    for j in finite[:: max(1, len(finite) // 12)]:
        if j + 1 < len(t) and t[j + 1] - t[j] >= 3:
            return j, int(t[j + 1] - t[j] - 1)
    raise AssertionError("no threshold with room to move")


def bucket_entry(spec, j) -> tuple[int, int]:
    """(m, b): threshold j of stage 0 channel 0 is candidate m of bucket b in the bucket
    tables both graph writers build (integer_spec.threshold_buckets)."""
    from otterlite.integer_spec.types import threshold_buckets

    stage = spec.stages[0]
    buckets = threshold_buckets(stage.thresholds, *stage.accumulator_range())
    t = int(stage.thresholds[0, j])
    b = (t - int(buckets.lo[0])) >> int(buckets.shift[0])
    [m] = np.flatnonzero(buckets.candidates[:, 0, b] == t)
    return int(m), b


def only_divergence(report):
    [result] = [r for r in report.results if r.status != "exact"]
    assert result.status == "mismatch" and result.divergence, result
    return result.divergence


def check_threshold(d, spec, j, raised):
    t = spec.stages[0].thresholds[0]
    assert d["output"] == "latents_g0" and d["element"][0] == 0 and d["backend"] == d["reference"] - 1
    assert d["stage"] == "threshold count" and d["accumulator_backend"] == d["accumulator_reference"]
    assert d["thresholds"][0]["index"] == j and d["thresholds"][0]["value"] == t[j]
    assert t[j] <= d["accumulator_reference"] < t[j] + raised
    assert d["thresholds"][0]["accumulator_on_it"] == (d["accumulator_reference"] == t[j])


def check_weight(d):
    """W[0, 0, 0, 0] + 1 adds the patch's top-left red value (> 0 where it differs) to channel 0."""
    assert d["output"] == "latents_g0" and d["element"][0] == 0 and d["stage"] == "accumulator"
    assert d["accumulator_backend"] - d["accumulator_reference"] > 0


ENCODER_CASES = {  # runtime kind -> (backends, artifact, tensor of stage 0's weights / thresholds)
    "onnx": (["ort-O0-t1", "ort-O3-t1"], "frappe-encoder.onnx"),
    "tflite": (["litert-reference", "litert", "tflm"], "frappe-encoder.tflite"),
}


@pytest.mark.parametrize("kind", ENCODER_CASES)
def test_threshold_and_weight_localised_in_interpreters(folders, tmp_path, kind):
    backends, file = ENCODER_CASES[kind]
    for b in backends:
        require(b)
    spec = load_spec((folders / "enc" / "frappe-encoder.spec").read_bytes())
    j, raised = spread_threshold(spec)
    path = only(folders / "enc", tmp_path / "t", file)
    m, b = bucket_entry(spec, j)  # T[0, j] is candidate m of channel 0's bucket b in both graphs
    if kind == "onnx":
        edit_onnx(path, f"s0_bucket_candidates{m}", lambda a: a.__setitem__((0, 0, b), a[0, 0, b] + raised))
    else:  # stage 0's thresholds reach 2^24, so its candidates are T = hi * 65536 + lo
        edit_tflite(path, f"s0_candidate{m}_lo_table", lambda a: a.__setitem__(b, a[b] + raised))
    report = verify(path.parent, backends=backends, **QUIET)
    for r in report.results:
        d = r.divergence
        if r.backend == "tflm":  # no intermediate values: the reference side only
            assert d["stage"].startswith("stage unknown") and d["probed"] is False
            assert d["thresholds"][0]["index"] == j
        else:
            check_threshold(d, spec, j, raised)
            assert d["probed"] is True
    path = only(folders / "enc", tmp_path / "w", file)
    if kind == "onnx":
        inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
        if "s0_merged_start" in inits:  # stage 0 shares the merged Conv: its block starts at that channel
            weights, row = "merged_weights_f32", int(numpy_helper.to_array(inits["s0_merged_start"])[0])
        else:
            weights, row = next(n for n in ("s0_weights_f32", "s0_weights_u8", "s0_weights_lo_u8") if n in inits), 0
        edit_onnx(path, weights, lambda a: a.__setitem__((row, 0, 0, 0), a[row, 0, 0, 0] + 1))
    else:
        edit_tflite(path, "s0_filter", lambda a: a.__setitem__(0, a[0] + 1))  # plane 0, W[0, 0, 0, 0]
    for r in verify(path.parent, backends=backends[:2], **QUIET).results:
        check_weight(r.divergence)


@pytest.mark.parametrize("backend", ["numpy", "numpy-streaming", "c-lib"])
def test_localised_on_spec_runtimes(folders, tmp_path, monkeypatch, backend):
    """The spec is the artifact of these runtimes, so the corruption is handed to the runtime
    alone (as a runtime bug would be): its debug path must show where it went wrong."""
    require(backend)
    spec = load_spec((folders / "enc" / "frappe-encoder.spec").read_bytes())
    j, raised = spread_threshold(spec)
    folder = only(folders / "enc", tmp_path / "m", "frappe-encoder.onnx").parent
    original = BACKENDS[backend]

    def corrupted(change):
        def load(path, spec):
            spec = copy.deepcopy(spec)
            change(spec.stages[0])
            return original.load(path, spec)
        return dataclasses.replace(original, load=load)
    monkeypatch.setitem(BACKENDS, backend, corrupted(lambda s: s.thresholds.__setitem__((0, j), s.thresholds[0, j] + raised)))
    check_threshold(only_divergence(verify(folder, backends=[backend], **QUIET)), spec, j, raised)
    monkeypatch.setitem(BACKENDS, backend, corrupted(lambda s: s.weights.__setitem__((0, 0, 0, 0), s.weights[0, 0, 0, 0] + 1)))
    check_weight(only_divergence(verify(folder, backends=[backend], **QUIET)))


INVERSE_CASES = {  # corruption -> stage named; each edit: (onnx tensor, change, tflite tensor, change)
    "table": ("table_rows", lambda a, s: a.__setitem__((1, 2 * 257 + 129), a[1, 2 * 257 + 129] + 2 ** s),
              "table_rows", lambda a, s: a.reshape(-1, 6).__setitem__((257 + 129, 2), a.reshape(-1, 6)[257 + 129, 2]
                                                                       + 2 ** (s - 16))),
    "mix": ("bias", lambda a, s: a.__setitem__((2, 0), a[2, 0] + 2 ** s),
            "sum_filter", lambda a, s: a.reshape(6, -1).__setitem__((2, 2), 2 * a.reshape(6, -1)[2, 2])),
    "final shift": ("divisor", lambda a, s: a.__setitem__((), a * 2),
                    "shift_scale", lambda a, s: a.__setitem__(0, a[0] / 2)),
}


@pytest.mark.parametrize("stage", INVERSE_CASES)
@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_inverse_stages_localised(folders, tmp_path, kind, stage):
    backend = "ort-O0-t1" if kind == "onnx" else "litert-reference"
    require(backend)
    spec = load_spec((folders / "inv" / "seaotter-inverse.spec").read_bytes())
    onnx_name, onnx_change, tflite_name, tflite_change = INVERSE_CASES[stage]
    path = only(folders / "inv", tmp_path / "c", f"seaotter-inverse.{kind}")
    if kind == "onnx":
        edit_onnx(path, onnx_name, lambda a: onnx_change(a, spec.shift))
    else:
        edit_tflite(path, tflite_name, lambda a: tflite_change(a, spec.shift))
    d = only_divergence(verify(path.parent, backends=[backend], **QUIET))
    assert d["stage"] == stage and d["probed"] is True and d["backend"] != d["reference"]
    if stage == "table":
        term = [int(i) for i in np.unravel_index(1, spec.tables.shape[:3])]
        assert d["term"] == term and d["code"] == 128 and d["element"][0] == 2
        assert d["entry_backend"] - d["entry_reference"] == 2 ** spec.shift
    else:
        assert (d["accumulator_backend"] != d["accumulator_reference"]) == (stage == "mix")


def junit_schema(tmp_path: Path):
    """The Jenkins xunit junit-10.xsd that pytest validates its own XML against, taken from
    pytest's source distribution on PyPI."""
    import xmlschema

    done = subprocess.run(["pip", "download", "pytest==8.3.5", "--no-binary", ":all:", "--no-deps", "-q", "-d",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "pytest-8.3.5.tar.gz") as archive:
        data = archive.extractfile("pytest-8.3.5/testing/example_scripts/junit-10.xsd").read()
    return xmlschema.XMLSchema(io.BytesIO(data))


@pytest.fixture(scope="module")
def corrupted_run(folders, tmp_path_factory):
    """verify --html --junit --json of the encoder with one corrupted ONNX threshold, and the
    inverse, on two backends each (so both pass and fail are in the reports)."""
    root = tmp_path_factory.mktemp("corrupted")
    spec = load_spec((folders / "enc" / "frappe-encoder.spec").read_bytes())
    j, raised = spread_threshold(spec)
    shutil.copytree(folders / "enc", root / "m")
    m, b = bucket_entry(spec, j)
    edit_onnx(root / "m" / "frappe-encoder.onnx", f"s0_bucket_candidates{m}",
              lambda a: a.__setitem__((0, 0, b), a[0, 0, b] + raised))
    code = main(["verify", str(root / "m"), "--backends", "torch-int", "ort-O0-t1", "litert", "--html",
                 str(root / "r.html"), "--junit", str(root / "j.xml"), "--json", str(root / "v.json")])
    return root, code


def test_junit_validates_and_carries_every_case(corrupted_run, tmp_path):
    root, code = corrupted_run
    assert code == 1
    data = (root / "j.xml").read_bytes()
    junit_schema(tmp_path).validate(io.BytesIO(data))
    result = json.loads((root / "v.json").read_text())
    cases = re.findall(rb'<testcase name="([^"]+)" classname="([^"]+)"', data)
    expected = {(r["backend"], f"parity.{r['model']}") for r in result["results"]}
    expected |= {(m, "fidelity") for m in result["fidelity"]}
    assert {(n.decode(), c.decode()) for n, c in cases} == expected and len(cases) == len(expected)
    [failure] = re.findall(rb'<failure message="([^"]+)" type="mismatch"', data)
    assert b"threshold count" in failure and b"ort-O0-t1" in data
    assert b'failures="1"' in data and b"<skipped" not in data


def test_junit_marks_missing_backends_skipped():
    from otterlite.verify import Report, Result

    report = Report([Result("frappe-encoder", "tflm", status="not installed: tflite_micro not installed"),
                     Result("frappe-encoder", "c", status="error: the compiler failed")])
    data = junit_xml(report)
    assert b"<skipped" in data and b"<error" in data and b'skipped="1"' in data and b'errors="1"' in data


def test_html_renders_every_section_in_chromium(corrupted_run, tmp_path):
    root, _ = corrupted_run
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not installed (otterlite setup chromium)")
    page = (root / "r.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # self-contained
    for section in ("parity", "divergence", "fidelity", "pictures", "provenance", "firmware"):
        assert f'id="{section}"' in page
    assert "threshold count" in page and "ort-O0-t1 differs" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4  # histogram, latent grid, float error maps, the mismatch's error map
    for encoded in images:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("L"))
        assert picture.std() > 5, "a blank picture"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1400,5000",
                           (root / "r.html").as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-500:]
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    colours = {tuple(c) for c in shot[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 200, "the page rendered without its pictures"
    green, red = (np.all(shot == c, axis=-1).sum() for c in ((0xc8, 0xec, 0xcb), (0xf6, 0xc3, 0xc0)))
    assert green > 1000 and red > 1000  # the matrix's exact and mismatch cells


def test_bad_input_exit_2_nothing_written(folders, tmp_path, capsys):
    shutil.copytree(folders / "enc", tmp_path / "m")
    html = tmp_path / "r.html"
    assert main(["verify", str(tmp_path / "m"), "--html", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"artifacts": []}))
    assert main(["verify", str(empty), "--html", str(html), "--junit", str(tmp_path / "j.xml")]) == 2
    assert "lists no artifacts" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing"), "--junit", str(tmp_path / "j.xml")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "m" / "frappe-encoder.onnx").write_bytes(b"changed")
    assert main(["verify", str(tmp_path / "m"), "--html", str(html), "--junit", str(tmp_path / "j.xml")]) == 2
    err = capsys.readouterr().err
    assert "sha256 differs" in err and len(err.strip().splitlines()) == 1
    assert not html.exists() and not (tmp_path / "j.xml").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_example_ci_workflow_commands_parse():
    """Every otterlite command in examples/ci/verify.yml is one the CLI accepts."""
    import shlex

    import yaml

    from otterlite.cli import build_parser

    workflow = yaml.safe_load((Path(__file__).parents[1] / "examples" / "ci" / "verify.yml").read_text())
    commands = [line.strip() for step in workflow["jobs"]["verify"]["steps"]
                for line in step.get("run", "").splitlines() if line.strip().startswith("otterlite ")]
    assert any("verify" in c and "--junit" in c and "--html" in c for c in commands)
    assert any(c.startswith("otterlite export") for c in commands)
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits (a failure here) on a flag it does not know
