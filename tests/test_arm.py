"""The exported files on the aarch64 builds of onnxruntime, LiteRT and numpy under qemu-user on
four emulated CPUs, and on armhf numpy (otterlite setup arm-runtimes), bit-exact with the
PyTorch integer reference on the photos and the adversarial set (all 16.7M colours for the
transforms)."""
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from otterlite import arm_env
from otterlite.backends import BACKENDS
from otterlite.export import FORMATS, MODELS, export
from otterlite.verify import verify

# what each emulated CPU must report to the runtimes (its hwcaps), and must not
FEATURES = {"a53": ((), ("asimddp", "i8mm")), "a72": ((), ("asimddp", "sve")),
            "a76": (("asimddp", "fphp"), ("i8mm", "sve")), "max": (("asimddp", "i8mm", "sve", "bf16"), ()),
            "a7": (("neon", "vfpv4"), ("asimddp",))}
RUNTIMES_PER_MODEL = {"arm64": 4 + 3 + 1, "armhf": 1}  # ORT levels, LiteRT resolvers, numpy; armhf: numpy


def cpu_backends(cpu):
    return [name for name in BACKENDS if name.endswith(f"-{cpu}")]


def require_arm():
    reason = arm_env.missing()
    if reason and os.environ.get("OTTERLITE_REQUIRE_ALL_BACKENDS"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The encoders at 64x64; the transforms at 512x512, so the 16.7M colours are 64 frames."""
    out = tmp_path_factory.mktemp("arm-models")
    export(["frappe-encoder", "walloc-encoder"], list(FORMATS), out, input_size="64x64", say=lambda line: None)
    export(["seaotter-inverse", "seaotter-forward"], list(FORMATS), out, input_size="512x512", say=lambda line: None)
    return out


def test_every_cpu_has_every_runtime_in_the_registry():
    assert set(arm_env.CPUS) == set(FEATURES)
    for cpu, arm in arm_env.CPUS.items():
        names = cpu_backends(cpu)
        assert len(names) == RUNTIMES_PER_MODEL[arm.arch] and f"numpy-{cpu}" in names, names
        assert (f"litert-reference-{cpu}" in names) == (arm.arch == "arm64")
        assert all(BACKENDS[n].emulated for n in names)


def test_arm_runtimes_are_exact_on_every_cpu(exported):
    """Every runtime of each CPU; two CPUs at a time (one qemu process each, on 2 cores)."""
    require_arm()

    def check(cpu):
        report = verify(exported, backends=cpu_backends(cpu), say=lambda line: None, with_fidelity=False)
        return cpu, report
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = dict(pool.map(check, sorted(arm_env.CPUS, key=lambda c: c != "max")))  # the slowest first
    assert list(MODELS) == list(dict.fromkeys(r.model for r in reports["a53"].results))
    for cpu, report in reports.items():
        assert len(report.results) == 4 * RUNTIMES_PER_MODEL[arm_env.CPUS[cpu].arch], cpu
        for r in report.results:
            assert r.status == "exact" and r.mismatches == 0 and r.images > 10, (cpu, r)
        want, absent = FEATURES[cpu]
        detail = report.results[0].detail.split()
        assert all(f in detail for f in want) and not any(f in detail for f in absent), (cpu, detail)


def test_absent_and_broken_environments_say_what_to_do(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("OTTERLITE_ARM_RUNTIMES", str(tmp_path / "none"))
    assert "otterlite setup arm-runtimes" in BACKENDS["litert-a76"].missing()
    report = verify(exported, backends=["numpy-a53"], say=lambda line: None, with_fidelity=False)
    assert report.results[0].status.startswith("not installed:") and "setup arm-runtimes" in report.results[0].status
    monkeypatch.setattr(arm_env.shutil, "which", lambda name: None)
    assert arm_env.missing() == "qemu-aarch64 and qemu-arm not installed (otterlite setup toolchains)"
    monkeypatch.undo()
    require_arm()
    # a partial environment: the real one without the onnxruntime wheel
    real, broken = arm_env.env_dir(), tmp_path / "broken"
    (broken / "site").mkdir(parents=True)
    for name in ("root-arm64", "root-armhf", "cpus", "ready.json"):
        (broken / name).symlink_to(real / name)
    for entry in (real / "site").iterdir():
        if not entry.name.startswith("onnxruntime"):
            (broken / "site" / entry.name).symlink_to(entry)
    monkeypatch.setenv("OTTERLITE_ARM_RUNTIMES", str(broken))
    monkeypatch.setattr(arm_env, "_WORKERS", {})
    report = verify(exported, backends=["ort-O3-a72", "numpy-a72"], say=lambda line: None, with_fidelity=False)
    status = {(r.model, r.backend): r.status for r in report.results}
    assert status[("frappe-encoder", "ort-O3-a72")].startswith("error: on a72: ModuleNotFoundError")
    assert status[("frappe-encoder", "numpy-a72")] == "exact" and not report.exact


def test_setup_keeps_a_complete_environment():
    require_arm()
    lines = []
    assert arm_env.setup(say=lines.append) == arm_env.env_dir()
    assert lines == [f"ARM runtimes already at {arm_env.env_dir()}"]
    ready = json.loads((arm_env.env_dir() / "ready.json").read_text())
    assert set(ready["hwcaps"]) == set(arm_env.CPUS) and shutil.which("qemu-aarch64")
