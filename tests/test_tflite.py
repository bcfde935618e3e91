"""TFLite specifics: exact building blocks on every TFLite interpreter, graph structure, info,
and bad input. Whole-model parity per backend is in test_export_verify.py."""
import numpy as np
import pytest
import tflite

from otterlite.backends import BACKENDS
from otterlite.cli import main
from otterlite.errors import OtterliteError
from otterlite.export import MODELS
from otterlite.export.tflite_info import read_tflite
from otterlite.export.tflite_writer import TfliteGraph, count_thresholds, digit_planes, float_count
from otterlite.models.checkpoint import load_frappe
from otterlite.integer_spec.freeze import freeze_frappe_encoder
from otterlite.integer_spec.types import FLOAT_EXACT_LIMIT, accumulator_range
from test_export_verify import exported, require  # noqa: F401  (shared module fixture)

EXACT_OPS = {"DEQUANTIZE", "QUANTIZE", "CONV_2D", "CAST", "MUL", "ADD", "GREATER_EQUAL", "GATHER", "PAD",
             "MAXIMUM", "MINIMUM", "DIV", "SLICE", "CONCATENATION",  # these two move data: WaLLoC's wrap
             "RESHAPE",  # the image folded (uint8, no copy) and the folded sums back
             "FLOOR"}  # the float32 bucket index


def run_interpreters(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """The single output of a one-input model on LiteRT (three resolvers) and TFLM."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro.python.tflite_micro import runtime

    out = {}
    for resolver in ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF"):
        it = Interpreter(model_content=data, experimental_op_resolver_type=getattr(OpResolverType, resolver))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        out[resolver] = it.get_tensor(it.get_output_details()[0]["index"])
    micro = runtime.Interpreter.from_bytes(data, arena_size=8 * 2 ** 20)
    micro.set_input(x, 0)
    micro.invoke()
    out["TFLM"] = micro.get_output(0)
    return out


def test_threshold_search_exhaustive_at_boundaries():
    """Every threshold of the default encoder at T-1, T, T+1, the range ends and the int32
    extremes through both count subgraphs (the bucket table and the binary search), against
    searchsorted, on every interpreter; and, where the range allows the float32 count, the
    same probes clipped to the range as float32 accumulators."""
    from otterlite.export.tflite_writer import binary_search_count
    from otterlite.integer_spec.types import stage_buckets

    for b in ("litert", "tflm"):
        require(b)
    model, ckpt = load_frappe()
    spec = freeze_frappe_encoder(model, ckpt.sha256)
    floats = 0
    for stage in spec.stages:
        t = stage.thresholds
        lo, hi = stage.accumulator_range()
        assert stage_buckets(stage) is not None  # the bucket count is used
        extremes = np.full((t.shape[0], 2), [-2 ** 31, 2 ** 31 - 2])  # INT32_MAX pads the search's table
        probes = np.concatenate([t - 1, t, t + 1, lo[:, None], hi[:, None], lo[:, None] - 1, hi[:, None] + 1,
                                 extremes], axis=1)  # (C, n)
        c, n = probes.shape
        for count in (lambda g, acc: count_thresholds(g, acc, stage, "t"),
                      lambda g, acc: binary_search_count(g, acc, t, "t")):
            g = TfliteGraph()
            acc = g.tensor("acc", np.int32, [1, 1, n, c])
            data = g.serialize([acc], [count(g, acc)], "thresholds")
            x = np.ascontiguousarray(probes.T.reshape(1, 1, n, c).astype(np.int32))
            want = np.stack([np.searchsorted(t[i], probes[i], side="right") for i in range(c)]).T
            for name, got in run_interpreters(data, x).items():
                np.testing.assert_array_equal(got.reshape(n, c), want, err_msg=name)
        if float_count(stage_buckets(stage)):  # a float32 accumulator (one digit plane): its whole range
            inside = np.clip(probes[:, :-2], lo[:, None], hi[:, None])  # the accumulators a conv can give
            n = inside.shape[1]
            g = TfliteGraph()
            acc = g.tensor("acc", np.float32, [1, 1, n, c])
            data = g.serialize([acc], [count_thresholds(g, acc, stage, "t")], "thresholds")
            assert "FLOOR" in read_tflite(data).ops and "DIV" not in read_tflite(data).ops
            x = np.ascontiguousarray(inside.T.reshape(1, 1, n, c).astype(np.float32))
            want = np.stack([np.searchsorted(t[i], inside[i], side="right") for i in range(c)]).T
            for name, got in run_interpreters(data, x).items():
                np.testing.assert_array_equal(got.reshape(n, c), want, err_msg=name)
            floats += 1
    assert floats  # the default encoder's 16x16 and 8x8 groups take it


@pytest.mark.parametrize("peak", [1, 127, 2047])
def test_digit_planes_reconstruct_and_stay_float_exact(peak):
    rng = np.random.default_rng(peak)
    w = rng.integers(-peak, peak + 1, (4, 3, 32, 32))
    w[0] = peak  # the extreme channels: every tap at +peak / -peak
    w[1] = -peak
    planes = digit_planes(w)
    np.testing.assert_array_equal(sum(16 ** i * p for i, p in enumerate(planes)), w)
    for p in planes:  # every partial sum of a plane's terms lies in its accumulator range
        lo, hi = accumulator_range(p)
        assert max(-lo.min(), hi.max()) < FLOAT_EXACT_LIMIT
    assert len(planes) == {1: 1, 127: 2, 2047: 3}[peak]


def test_tflite_graph_structure(exported):  # noqa: F811
    for name in MODELS:
        data = (exported / f"{name}.tflite").read_bytes()
        assert data[4:8] == b"TFL3"
        info = read_tflite(data)
        assert info.version == 3
        assert set(info.ops) <= EXACT_OPS, set(info.ops) - EXACT_OPS
        model = tflite.Model.GetRootAsModel(data, 0)
        assert model.Buffers(0).DataLength() == 0  # buffer 0 stays empty (TFLM needs it)
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            assert code.Version() == 1 and code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
        graph = model.Subgraphs(0)
        for i in range(graph.OperatorsLength()):  # every conv is float32: no requantizing int8 kernel
            op = graph.Operators(i)
            if info.ops[i] == "CONV_2D":
                assert {info.tensors[j].dtype for j in op.InputsAsNumpy()} == {"float32"}
        activations = [t for t in info.tensors if not t.constant]
        assert not any(254 in t.shape or 256 in t.shape for t in activations)
        assert info.inputs[0].dtype == "uint8" and info.inputs[0].shape == [1, 128, 192, 3]
    enc = read_tflite((exported / "frappe-encoder.tflite").read_bytes())
    assert [t.dtype for t in enc.outputs] == ["int8"] * 3
    assert [t.shape for t in enc.outputs] == [[1, 4, 6, 3], [1, 8, 12, 6], [1, 16, 24, 3]]
    biggest = max((t for t in enc.tensors if not t.constant), key=lambda t: t.nbytes)
    assert biggest.name == "image_f32_fold32"  # the threshold search adds only (h, w, C)-sized tensors


def test_tflm_reports_arena(exported):  # noqa: F811
    require("tflm")
    from otterlite.verify import verify

    report = verify(exported, backends=["tflm"], say=lambda line: None, with_fidelity=False)
    for r in report.results:
        assert r.status == "exact"
        arena = int(r.detail.split()[1])
        assert arena > 128 * 192 * 3  # holds at least the input image


def test_info_tflite(exported, capsys):  # noqa: F811
    assert main(["info", str(exported / "frappe-encoder.tflite")]) == 0
    out = capsys.readouterr().out
    assert "TFLite schema version 3" in out and "GATHER x" in out and "CONV_2D x" in out
    assert "inputs:  image: uint8 [1, 128, 192, 3]" in out
    assert "latents_g0: int8 [1, 4, 6, 3]" in out
    assert '"format": "tflite"' in out and '"layout": "NHWC"' in out


def test_tflite_bad_input(exported, tmp_path, capsys, monkeypatch):  # noqa: F811
    data = (exported / "seaotter-inverse.tflite").read_bytes()
    for cut, fragment in [(data[: len(data) // 2], "truncated or corrupted"), (data[:-64], "truncated or corrupted"),
                          (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a TFLite file")]:
        bad = tmp_path / "bad.tflite"
        bad.write_bytes(cut)
        assert main(["info", str(bad)]) == 2
        assert fragment in capsys.readouterr().err
    path = exported / "frappe-encoder.tflite"
    run = BACKENDS["litert-reference"].load(path, None)
    with pytest.raises(OtterliteError, match="re-export with --input-size"):
        run(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(OtterliteError, match="input float32"):
        run(np.zeros((1, 3, 128, 192), np.float32))
    monkeypatch.setenv("OTTERLITE_TFLITE_RUNTIME_VENV", str(tmp_path / "no-venv"))
    from otterlite.verify import format_report, verify

    report = verify(exported, backends=["torch-int", "tflite-runtime"], say=lambda line: None, with_fidelity=False)
    out = "\n".join(format_report(report))
    assert [r.status for r in report.results if r.backend == "tflite-runtime"][0].startswith("not installed")
    assert "not installed: tflite-runtime environment not found" in out and "otterlite setup tflite-runtime" in out
