"""Export and parity: every backend bit-exact with the PyTorch integer reference."""
import json
import os

import numpy as np
import onnx
import pytest
import torch

import published
from otterlite.backends import BACKENDS
from otterlite.cli import main
from otterlite.export import FORMATS, MODELS, export
from otterlite.export.onnx_writer import GraphBuilder, count_thresholds, finish, row_parts
from otterlite.models.checkpoint import load_frappe, load_seaotter
from otterlite.integer_spec import load_spec, save_spec
from otterlite.integer_spec.freeze import freeze_frappe_encoder, freeze_seaotter_inverse
from otterlite.integer_spec.torch_reference import run_spec
from otterlite.verify import adversarial, fit, verify

SIZE = "128x192"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    export(list(MODELS), list(FORMATS), out, input_size=SIZE, say=lambda line: None)
    return out


def require(backend: str) -> None:
    """Skip a backend that is not installed here, visibly; CI sets OTTERLITE_REQUIRE_ALL_BACKENDS=1
    so that a missing backend fails instead."""
    reason = BACKENDS[backend].missing()
    if reason and os.environ.get("OTTERLITE_REQUIRE_ALL_BACKENDS"):
        pytest.fail(f"{backend}: {reason}")
    if reason:
        pytest.skip(f"{backend}: {reason}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not BACKENDS[b].emulated])  # ARM ones: test_arm.py
def test_parity_default_models(exported, backend):
    require(backend)
    report = verify(exported, backends=[backend], say=lambda line: None, with_fidelity=False)
    kinds = BACKENDS[backend].kinds or MODELS
    assert [r.model for r in report.results] == [m for m in MODELS if m in kinds]
    for r in report.results:
        assert r.status == "exact" and r.mismatches == 0 and r.images > 10, r


def test_fidelity_goals(exported):
    report = verify(exported, backends=["torch-int"], say=lambda line: None)
    assert report.faithful and set(report.fidelity) == set(MODELS)
    enc = report.fidelity["frappe-encoder"]
    assert enc["max_lsb"] <= 1 and enc["equal_share"] >= 0.99 and enc["pass"] and enc["source"] == "measured"
    assert [g["patch"] for g in enc["groups"]] == [32, 16, 8]
    for name in ("seaotter-inverse", "seaotter-forward"):
        fid = report.fidelity[name]
        assert fid["max_lsb"] <= 1 and fid["inputs"] == "all 2^24 triples" and fid["pass"]
        assert sum(fid["lsb_histogram"]) == 3 * 2 ** 24


def test_published_format_random_checkpoint_on_photos(tmp_path):
    frappe_dir = published.write_frappe(tmp_path / "f", snapshots=[6], realistic=True)
    so_dir, _ = published.write_seaotter(tmp_path / "s", "D")
    out = tmp_path / "out"
    assert main(["export", "all", "--format", "onnx,tflite", "-o", str(out), "--checkpoint", str(frappe_dir),
                 "--seaotter-checkpoint", str(so_dir), "--n-ch", "6", "--input-size", "256x256",
                 "--weight-bits", "12"]) == 0
    backends = ["torch-int", "ort-O3-t2", "ort-O0-t1", "litert", "litert-reference", "tflm"]
    for b in backends:
        require(b)
    assert main(["verify", str(out), "--backends", *backends, "--json", str(tmp_path / "v.json")]) == 0
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["exact"] is True and result["faithful"] is True
    assert {(r["model"], r["backend"]) for r in result["results"]} == {(m, b) for m in MODELS for b in backends}
    assert all(r["mismatches"] == 0 and r["max_lsb"] == 0 and r["images"] > 10 for r in result["results"])


def test_thresholds_exhaustive_at_boundaries():
    """Every threshold of the default encoder at T-1, T, T+1, the range ends and the int32
    extremes through both ONNX threshold counts (the bucket table and the two-level count)
    against searchsorted."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from otterlite.export.onnx_writer import count_two_level
    from otterlite.integer_spec.types import stage_buckets

    model, ckpt = load_frappe()
    spec = freeze_frappe_encoder(model, ckpt.sha256)
    for stage in spec.stages:
        t = stage.thresholds
        c = t.shape[0]
        probes = np.concatenate([t - 1, t, t + 1], axis=1)  # (C, 3L)
        lo, hi = stage.accumulator_range()
        extremes = np.full((c, 2), [-2 ** 31, 2 ** 31 - 2])  # INT32_MAX pads the two-level table: never an accumulator
        probes = np.concatenate([probes, lo[:, None], hi[:, None], lo[:, None] - 1, hi[:, None] + 1, extremes], axis=1)
        assert stage_buckets(stage) is not None  # the bucket count is used
        for count, inputs in ((count_thresholds, probes),
                              (lambda g, a, stage, shape, tag: count_two_level(g, a, stage.thresholds, shape, tag),
                               probes)):
            n = inputs.shape[1]
            g = GraphBuilder()
            count(g, "acc", stage, (c, 1, n), "t")
            inp = [helper.make_tensor_value_info("acc", TensorProto.INT32, [1, c, 1, n])]
            outp = [helper.make_tensor_value_info("t_count", TensorProto.INT32, [1, c, 1, n])]
            m = finish(g, "thresholds", inp, outp)
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"acc": inputs.reshape(1, c, 1, n).astype(np.int32)})[0].reshape(c, n)
            want = np.stack([np.searchsorted(t[i], inputs[i], side="right") for i in range(c)])
            np.testing.assert_array_equal(got, want)
        # the step really happens at T: count(T) - count(T-1) >= 1 for every finite threshold
        L = t.shape[1]
        finite = (t > lo[:, None]) & (t <= hi[:, None])
        assert np.all((want[:, L:2 * L] - want[:, :L])[finite] >= 1)


@pytest.mark.parametrize("form", ["float-parts", "overlapping-parts", "conv-integer", "two-level"])
def test_onnx_forms(form):
    """Each accumulator and count form of the ONNX writer on ORT against the reference: the
    default (32x32 patches in two parts of kernel rows, a block of output channels per part,
    merged with the 16x16 group's 4 patches per window into one float32 Conv, the 8x8 group
    alone; bucket count); a 32x32 kernel at stride 16 with a zero border (one Conv per part
    on the rows it reads; the 16x16 and 8x8 groups merged); 12-bit weights on 32x32 patches
    (one kernel row's bound above 2^24: ConvInteger on weight digits; the others merged);
    thresholds packed closer than any bucket table resolves (the two-level count)."""
    import dataclasses

    import onnxruntime as ort

    from otterlite.export import build

    model, ckpt = load_frappe()
    spec = freeze_frappe_encoder(model, ckpt.sha256)
    rng = np.random.default_rng(3)
    stage = spec.stages[0]
    if form == "conv-integer":
        stage = dataclasses.replace(stage, weights=rng.integers(-2047, 2048, stage.weights.shape))
        lo, hi = stage.accumulator_range()
        stage.thresholds = np.sort(rng.integers(lo[:, None] // 64, hi[:, None] // 64, (3, 255)), axis=1)
    if form == "two-level":
        stage = dataclasses.replace(stage, thresholds=np.sort(rng.integers(-400, 400, (3, 255)), axis=1))
    if form == "overlapping-parts":
        stage = dataclasses.replace(stage, stride=16, pad=8)
    assert len(row_parts(stage.weights) or []) > 1 or form in ("conv-integer", "two-level")
    spec = dataclasses.replace(spec, stages=[stage, *spec.stages[1:]])
    data = build(spec, "onnx", 64, 96)
    nodes = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert nodes.count("Conv") == {"overlapping-parts": 3, "conv-integer": 1}.get(form, 2)
    ops = set(nodes)
    assert "DepthToSpace" in ops
    assert {"float-parts": "GatherElements", "overlapping-parts": "Pad", "conv-integer": "ConvInteger",
            "two-level": "ReduceSum"}[form] in ops
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for name, x in adversarial(spec, 64, 96):
        for want, got in zip(run_spec(spec, torch.from_numpy(x)), session.run(None, {"image": x})):
            assert (want.numpy() == got).all(), name


def test_inverse_tables_exhaustive():
    """All 256 codes of every table are one rounded product W' * t(z) * 2^shift, and bias plus
    the three terms, unscaled, is the independent float64 inverse of the published formulas."""
    from otterlite.models.checkpoint import SEAOTTER, read_checkpoint

    tensors = {k: v.astype(np.float64) for k, v in read_checkpoint("default", SEAOTTER).tensors.items()}
    bundle, ckpt = load_seaotter()
    spec = freeze_seaotter_inverse(bundle, ckpt.sha256)
    from otterlite.integer_spec.freeze import inverse_terms

    terms, _, _ = inverse_terms(bundle.inv)
    assert spec.tables.shape == (3, 1, 1, 256, 3)
    np.testing.assert_array_equal(spec.tables, np.round(terms * 2.0 ** spec.shift))
    z = np.arange(256, dtype=np.float64)
    codes = np.stack([z, np.roll(z, 85), np.roll(z, 170)])[None, :, :, None]  # (1, 3, 256, 1)
    want = published.seaotter_inverse(tensors, bundle.arch, codes)[0, :, :, 0].T  # (256, 3) float64
    idx = codes[0, :, :, 0].astype(int)
    got = (spec.bias + sum(spec.tables[c, 0, 0][idx[c]] for c in range(3))) / 2.0 ** spec.shift - 0.5
    assert np.abs(got - want).max() < 1e-3


def test_graph_structure(exported):
    ops = {}
    for name in MODELS:
        m = onnx.load(str(exported / f"{name}.onnx"))
        ops[name] = {n.op_type for n in m.graph.node}
        assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        for out in m.graph.output:
            want = onnx.TensorProto.INT8 if name.endswith("-encoder") else onnx.TensorProto.UINT8
            assert out.type.tensor_type.elem_type == want
        assert not ops[name] & {"QLinearConv", "QuantizeLinear", "DequantizeLinear", "Round", "Softsign"}
    # float32 Conv per part of kernel rows and the bucket-table count (test_onnx_forms: the fallbacks)
    assert {"Conv", "GatherElements", "Div"} <= ops["frappe-encoder"] and not ops["frappe-encoder"] & {"ConvInteger",
                                                                                                      "ReduceSum"}
    assert {"GatherElements", "MatMul", "Div"} <= ops["seaotter-inverse"]
    assert {"Conv", "Slice", "Concat"} <= ops["walloc-encoder"]  # wrap-around border by slices
    manifest = json.loads((exported / "manifest.json").read_text())
    enc = next(e for e in manifest["artifacts"] if e["model"] == "frappe-encoder")
    assert enc["scale_groups"] == [[32, 0, 3], [16, 3, 9], [8, 9, 12]] and enc["n_ch"] == 12
    assert [o["shape"] for o in enc["outputs"]] == [[1, 3, 4, 6], [1, 6, 8, 12], [1, 3, 16, 24]]
    walloc = next(e for e in manifest["artifacts"] if e["model"] == "walloc-encoder")
    assert walloc["J"] == 3 and [o["shape"] for o in walloc["outputs"]] == [[1, 12, 16, 24]]


def test_spec_blob_round_trip(exported):
    for name in MODELS:
        data = (exported / f"{name}.spec").read_bytes()
        spec = load_spec(data)
        assert save_spec(spec) == data


def test_manifest_crc_matches_reference(exported):
    import zlib

    from otterlite.export import fixed_input

    manifest = json.loads((exported / "manifest.json").read_text())
    assert sorted((e["model"], e["format"]) for e in manifest["artifacts"]) == sorted(
        (m, f) for m in MODELS for f in FORMATS)
    for entry in manifest["artifacts"]:
        spec = load_spec((exported / entry["spec_file"]).read_bytes())
        outs = [o.numpy() for o in run_spec(spec, torch.from_numpy(fixed_input(128, 192)))]
        if entry["layout"] == "NHWC":
            outs = [np.ascontiguousarray(o.transpose(0, 2, 3, 1)) for o in outs]
        assert [list(o.shape) for o in outs] == [o["shape"] for o in entry["outputs"]]
        assert [zlib.crc32(o.tobytes()) for o in outs] == list(entry["fixed_input_output_crc32"].values())


def test_export_bad_input(tmp_path, capsys, exported):
    out = tmp_path / "o"
    for argv, fragment in [
        (["export", "nope", "-o", str(out)], "unknown model"),
        (["export", "frappe-encoder", "--format", "coreml", "-o", str(out)], "unknown format"),
        (["export", "frappe-encoder", "--input-size", "100x100", "-o", str(out)], "multiples of the largest patch"),
        (["export", "frappe-encoder", "--weight-bits", "16", "-o", str(out)], "--weight-bits 16"),
        (["export", "frappe-encoder", "--weight-bits", "many", "-o", str(out)], "--weight-bits many"),
        (["export", "frappe-encoder", "--calibration", str(tmp_path / "none"), "-o", str(out)], "no such directory"),
        (["export", "frappe-encoder", "--calibration", str(tmp_path), "-o", str(out)], "no images"),
        (["export", "frappe-encoder", "--min-equal", "1.5", "-o", str(out)], "--min-equal 1.5"),
        (["export", "seaotter-inverse", "--max-lsb", "-1", "-o", str(out)], "--max-lsb -1"),
        (["verify", str(exported), "--min-within", "2"], "--min-within 2"),
        (["verify", str(tmp_path / "empty")], "no such directory"),
    ]:
        assert main(argv) == 2
        assert fragment in capsys.readouterr().err
        assert not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in exported.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    onnx_file = broken / "seaotter-inverse.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-50])
    assert main(["verify", str(broken)]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    (broken / "manifest.json").write_text("{")
    assert main(["verify", str(broken)]) == 2
    assert "corrupted manifest" in capsys.readouterr().err


def test_adversarial_set_reaches_extremes():
    model, ckpt = load_frappe()
    spec = freeze_frappe_encoder(model, ckpt.sha256)
    imgs = dict(adversarial(spec, 128, 192))
    _, trace = run_spec(spec, torch.from_numpy(imgs["boundaries-stage2"]), intermediate=True)
    lo, hi = spec.stages[2].accumulator_range()
    acc = trace["stage2.accumulator"][0]
    assert all(int(acc[c].max()) == hi[c] and int(acc[c].min()) == lo[c] for c in range(3))
    assert fit(np.zeros((10, 10, 3), np.uint8), 32, 32).shape == (1, 3, 32, 32)
