"""Loaders and float models against an independent computation of the published formulas,
on random-weight checkpoints written in the published formats."""
import json

import numpy as np
import pytest
import torch

import published
from otterlite.errors import OtterliteError
from otterlite.models.checkpoint import load_frappe, load_seaotter
from otterlite.models.seaotter import ARCHS


@pytest.fixture(scope="module")
def frappe_dir(tmp_path_factory):
    return published.write_frappe(tmp_path_factory.mktemp("frappe"))


@pytest.mark.parametrize("n", [1, 3, 6])
def test_frappe_encoder_matches_formula(frappe_dir, photo, n):
    from safetensors.numpy import load_file

    t = load_file(str(frappe_dir / "FRAPPE_pytorch_model.safetensors"))
    model, _ = load_frappe(str(frappe_dir), n)
    x = photo[:128, :192].transpose(2, 0, 1)[None].copy()
    got = model.encode(torch.from_numpy(x))
    want = published.frappe_encode(t, published.SMALL_FRAPPE, n, x)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert g.dtype == torch.int8
        np.testing.assert_array_equal(g.numpy(), w)
    # the test weights exercise the companding, not just saturation
    values = np.concatenate([w.ravel() for w in want])
    assert len(np.unique(values)) > min(40, values.size // 2)


def test_frappe_linear_input_matches_formula(tmp_path, photo):
    from safetensors.numpy import load_file

    cfg = dict(published.SMALL_FRAPPE, linear_input=True)
    folder = published.write_frappe(tmp_path, cfg, snapshots=[4])
    t = load_file(str(folder / "FRAPPE_pytorch_model.safetensors"))
    model, _ = load_frappe(str(folder), 4)
    x = photo[:64, :64].transpose(2, 0, 1)[None].copy()
    for g, w in zip(model.encode(torch.from_numpy(x)), published.frappe_encode(t, cfg, 4, x)):
        np.testing.assert_array_equal(g.numpy(), w)


@pytest.mark.parametrize("n", [2, 6])
def test_frappe_decoder_matches_formula(frappe_dir, photo, n):
    from safetensors.numpy import load_file

    t = load_file(str(frappe_dir / "FRAPPE_pytorch_model.safetensors"))
    model, _ = load_frappe(str(frappe_dir), n)
    x = torch.from_numpy(photo[:64, :96].transpose(2, 0, 1)[None].copy())
    latents = model.encode(x)
    with torch.no_grad():  # float64, so the comparison measures the formulas, not float32 rounding
        got = model.decoder_net.double()(latents).numpy()
    want = published.frappe_decode(t, published.SMALL_FRAPPE, n, [z.numpy() for z in latents])
    assert got.shape == want.shape == (1, 3, 64, 96)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.std(want) > 0.01


@pytest.mark.parametrize("arch", ARCHS)
def test_seaotter_transforms_match_formula(tmp_path, arch, photo):
    folder, t = published.write_seaotter(tmp_path, arch)
    bundle, _ = load_seaotter(str(folder))
    rgb = photo[:32, :48].transpose(2, 0, 1)[None].astype(np.float64)
    with torch.no_grad():
        fwd = bundle.fwd(torch.from_numpy(rgb).float()).double().numpy()
    want_fwd = published.seaotter_forward(t, arch, rgb)
    np.testing.assert_allclose(fwd, want_fwd, atol=1e-5 * np.abs(want_fwd).max())
    codec = np.arange(256, dtype=np.float64).reshape(1, 1, 16, 16).repeat(3, axis=1)
    codec[:, 1] = codec[:, 1, ::-1]
    with torch.no_grad():
        inv = bundle.inv(torch.from_numpy(codec).float()).double().numpy()
    want_inv = published.seaotter_inverse(t, arch, codec)
    np.testing.assert_allclose(inv, want_inv, atol=1e-5 * max(1.0, np.abs(want_inv).max()))
    assert bundle.K == 3 and all(len(q) == 3 and len(q[0]) == 64 for q in bundle.qtables)


def test_default_checkpoints_load():
    model, ckpt = load_frappe()
    assert model.n_ch == 12 and [(g.ps, g.start, g.end) for g in model.groups] == [(32, 0, 3), (16, 3, 9), (8, 9, 12)]
    assert len(ckpt.sha256) == 64
    bundle, _ = load_seaotter()
    assert bundle.arch == "A" and bundle.K >= 3


def test_bad_checkpoints(tmp_path, frappe_dir):
    with pytest.raises(OtterliteError, match="no such directory"):
        load_frappe(str(tmp_path / "missing"))
    with pytest.raises(OtterliteError, match="out of range"):
        load_frappe(str(frappe_dir), 7)
    bad = tmp_path / "bad"
    published.write_frappe(bad, snapshots=[2])
    with pytest.raises(OtterliteError, match="no snapshot merged.3"):
        load_frappe(str(bad), 3)
    weights = bad / "FRAPPE_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(OtterliteError, match="truncated or corrupted"):
        load_frappe(str(bad), 2)
    cfg = dict(published.SMALL_FRAPPE)
    del cfg["decoder_dim"]
    published.write_frappe(bad, snapshots=[2])
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OtterliteError, match="missing field 'decoder_dim'"):
        load_frappe(str(bad), 2)
    (bad / "config.json").write_text(json.dumps(dict(published.SMALL_FRAPPE, decoder_dim=8)))
    with pytest.raises(OtterliteError, match="does not match config.json"):
        load_frappe(str(bad), 2)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(OtterliteError, match="not valid JSON"):
        load_frappe(str(bad), 2)


def test_hub_offline_fails_fast_with_fix(tmp_path):
    with pytest.raises(OtterliteError) as err:
        load_frappe("hub:danjacobellis/FRAPPE/FRAPPE", cache_dir=str(tmp_path))
    assert "--checkpoint DIR" in str(err.value) and "--cache-dir" in str(err.value)
    with pytest.raises(OtterliteError, match="hub:OWNER/REPO/SUBDIR"):
        load_frappe("hub:onlyname")


def test_hub_source_uses_local_cache_without_network(tmp_path):
    """A Hugging Face cache laid out as huggingface_hub writes it is read offline."""
    published.write_frappe(published.hub_snapshot(tmp_path, "danjacobellis/FRAPPE") / "FRAPPE", snapshots=[3, 6])
    model, ckpt = load_frappe("hub:", 3, cache_dir=str(tmp_path))
    assert model.n_ch == 3 and ckpt.source.endswith("FRAPPE")
