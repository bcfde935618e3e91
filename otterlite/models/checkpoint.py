"""Checkpoint sources and loaders for the published FRAPPE and SEA OTTER formats.

A source is one of (WaLLoC: NAME.json + NAME.pth, a torch.save'd dict whose
`model_state_dict` is the state dict, read with torch.load(weights_only=True) only;
"hub:OWNER/REPO[/NAME][@REVISION]", NAME defaulting to RGB_16x):
  "default"                    the weights embedded in this package
  a directory                  holding config.json + the safetensors file
  "hub:REPO/SUBDIR[@REVISION]" downloaded through huggingface_hub ("hub:" alone = published default)

FRAPPE and SEA OTTER: only safetensors is read (never pickle). The checkpoint hash is
sha256(config.json bytes + b"\\0" + weights bytes); containers and manifests record it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError


@dataclass(frozen=True)
class Format:
    name: str
    weights_file: str
    hub_default: str


FRAPPE = Format("FRAPPE", "FRAPPE_pytorch_model.safetensors", "danjacobellis/FRAPPE/FRAPPE")
SEAOTTER = Format("SEA OTTER", "seaotter_jpeg_pytorch_model.safetensors", "danjacobellis/seaotter/seaotter_jpeg_s3")
WALLOC = Format("WaLLoC", "RGB_16x.pth", "danjacobellis/walloc/RGB_16x")
DEFAULT_DIRS = {FRAPPE.name: "frappe", SEAOTTER.name: "seaotter", WALLOC.name: "walloc"}


@dataclass
class Checkpoint:
    config: dict
    tensors: dict[str, np.ndarray]
    sha256: str
    source: str


def default_dir(fmt: Format) -> Path:
    return Path(str(resources.files("otterlite.models") / "defaults" / DEFAULT_DIRS[fmt.name]))


def parse_hub_source(source: str, fmt: Format) -> tuple[str, str, str | None]:
    """'hub:owner/name/sub/dir@rev' -> ('owner/name', 'sub/dir', 'rev')."""
    spec = source[len("hub:"):] or fmt.hub_default
    spec, _, revision = spec.partition("@")
    parts = [p for p in spec.split("/") if p]
    if len(parts) < 3:
        raise OtterliteError(f"checkpoint {source!r}: expected hub:OWNER/REPO/SUBDIR[@REVISION], "
                             f"e.g. hub:{fmt.hub_default}")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the hub endpoint accepts a TCP connection, else the reason. Checked first
    because huggingface_hub retries with back-off for about 25 s when offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname} unreachable: {err}"
    return None


def download_from_hub(source: str, fmt: Format, cache_dir: str | None) -> Path:
    """Cached files are used without network; otherwise the endpoint is probed, then fetched."""
    repo, subdir, revision = parse_hub_source(source, fmt)
    fix = (f"download {subdir}/config.json and {subdir}/{fmt.weights_file} from {repo} on a "
           f"connected machine and pass --checkpoint DIR, or pass --cache-dir pointing at a "
           f"Hugging Face cache that already holds them")
    return fetch_hub_files(source, repo, [f"{subdir}/config.json", f"{subdir}/{fmt.weights_file}"],
                           revision, cache_dir, fix)


def fetch_hub_files(source: str, repo: str, names: list[str], revision: str | None,
                    cache_dir: str | None, fix: str) -> Path:
    """-> the local folder holding `names` of hub repo `repo` (cache first, then network)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise OtterliteError(f"checkpoint {source!r} needs huggingface_hub (pip install "
                             f"'otterlite[hub]'), or {fix}") from None
    try:
        paths = [hf_hub_download(repo, n, revision=revision, cache_dir=cache_dir, local_files_only=True)
                 for n in names]
        return Path(paths[-1]).parent
    except Exception:
        pass
    offline = hub_reachable()
    if offline:
        raise OtterliteError(f"cannot fetch {source!r}: {offline}; {fix}")
    for name in names:
        try:
            path = Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir))
        except Exception as err:  # unknown repo, HTTP errors: all end the same way
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise OtterliteError(f"could not fetch {name} for {source!r} ({reason[:160]}); {fix}") from None
    return path.parent


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(path.read_bytes())
    except Exception as err:
        raise OtterliteError(f"{path}: not a readable safetensors file ({str(err)[:120]}); "
                             f"the file is truncated or corrupted: download it again") from None


def read_config(path: Path) -> tuple[dict, bytes]:
    """A checkpoint's JSON config -> (the object, its bytes for the checkpoint hash)."""
    data = path.read_bytes()
    try:
        config = json.loads(data)
        if not isinstance(config, dict):
            raise ValueError("top level is not an object")
    except ValueError as err:
        raise OtterliteError(f"{path}: not valid JSON ({err}); fix or replace the file") from None
    return config, data


def read_checkpoint(source: str | None, fmt: Format, cache_dir: str | None = None) -> Checkpoint:
    """Resolve `source` and read its config.json and safetensors weights."""
    source = source or "default"
    if source == "default":
        folder = default_dir(fmt)
    elif source.startswith("hub:"):
        folder = download_from_hub(source, fmt, cache_dir)
    else:
        folder = Path(source)
        if folder.is_file():
            raise OtterliteError(f"--checkpoint {source}: expected a directory holding config.json "
                                 f"and {fmt.weights_file}, got a file")
        if not folder.is_dir():
            raise OtterliteError(f"--checkpoint {source}: no such directory; pass a directory with "
                                 f"config.json and {fmt.weights_file}, 'default', or hub:REPO/SUBDIR")
    config_path, weights_path = folder / "config.json", folder / fmt.weights_file
    for path in (config_path, weights_path):
        if not path.is_file():
            raise OtterliteError(f"{fmt.name} checkpoint {source}: missing {path.name} in {folder}")
    config, config_bytes = read_config(config_path)
    weights_bytes = weights_path.read_bytes()
    tensors = read_safetensors(weights_path)
    digest = hashlib.sha256(config_bytes + b"\0" + weights_bytes).hexdigest()
    return Checkpoint(config, tensors, digest, str(folder))


def snapshot_tensors(ckpt: Checkpoint, n_ch: int) -> dict[str, np.ndarray]:
    prefix = f"merged.{n_ch}."
    found = {k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)}
    if not found:
        raise OtterliteError(f"{ckpt.source}: the weights hold no snapshot merged.{n_ch}.*; "
                             f"choose another --n-ch")
    return found


def load_frappe(source: str | None = None, n_ch: int | None = None, cache_dir: str | None = None):
    """-> (FrappeModel in eval mode, Checkpoint). n_ch defaults to n_trained."""
    import torch

    from otterlite.models.frappe import FrappeModel
    from otterlite.models.frappe_config import FrappeConfig

    ckpt = read_checkpoint(source, FRAPPE, cache_dir)
    config = FrappeConfig.from_dict(ckpt.config, f"{ckpt.source}/config.json")
    n_ch = config.check_n_ch(config.n_trained if n_ch is None else n_ch)
    model = FrappeModel(config, n_ch)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float32)
               for k, v in snapshot_tensors(ckpt, n_ch).items()}
    model.load_published(tensors, ckpt.source)
    return model.eval(), ckpt


def load_seaotter(source: str | None = None, cache_dir: str | None = None):
    """-> (SeaOtterBundle in eval mode, Checkpoint). `proxy.*` (training only) and a task
    pipeline's `decoder.*` are ignored."""
    import torch

    from otterlite.models.seaotter import SeaOtterBundle

    ckpt = read_checkpoint(source, SEAOTTER, cache_dir)
    where = f"{ckpt.source}/config.json"
    for key in ("K", "color_xform_arch"):
        if key not in ckpt.config:
            raise OtterliteError(f"{where}: missing field '{key}' (a SEA OTTER config needs K and color_xform_arch)")
    K = ckpt.config["K"]
    if not isinstance(K, int) or K < 1:
        raise OtterliteError(f"{where}: K = {K!r} must be a positive integer")
    lambdas = ckpt.config.get("lambdas", [None] * K)
    if len(lambdas) != K:
        raise OtterliteError(f"{where}: 'lambdas' has {len(lambdas)} entries but K = {K}")
    qtables = []
    for i in range(K):
        if f"qtable.{i}" not in ckpt.tensors:
            raise OtterliteError(f"{ckpt.source}: weights lack qtable.{i} (config says K = {K}); "
                                 f"JPEG operating points need them")
        qtables.append(ckpt.tensors[f"qtable.{i}"])
    bundle = SeaOtterBundle(ckpt.config["color_xform_arch"], qtables, lambdas)
    for part, prefix in ((bundle.fwd, "fwd."), (bundle.inv, "inv.")):
        state = {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float32)
                 for k, v in ckpt.tensors.items() if k.startswith(prefix)}
        try:
            part.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = "; ".join(s.strip() for s in str(err).splitlines()[1:3])
            raise OtterliteError(f"{ckpt.source}: {prefix}* does not match arch "
                                 f"{bundle.arch} ({detail})") from None
    return bundle.eval(), ckpt


def write_checkpoint(folder: str | Path, fmt: Format, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """Write config.json + the safetensors weights in the published layout."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / fmt.weights_file))
    return folder


def frappe_tensors(snapshots: dict) -> dict[str, np.ndarray]:
    """{n: FrappeModel} -> flat `merged.{n}.*` tensors."""
    return {f"merged.{n}.{k}": v.detach().cpu().numpy()
            for n, model in snapshots.items() for k, v in model.published_state_dict().items()}


def seaotter_tensors(bundle) -> dict[str, np.ndarray]:
    out = {f"fwd.{k}": v.detach().cpu().numpy() for k, v in bundle.fwd.state_dict().items()}
    out.update({f"inv.{k}": v.detach().cpu().numpy() for k, v in bundle.inv.state_dict().items()})
    for i, q in enumerate(bundle.qtables):
        out[f"qtable.{i}"] = np.asarray(q, dtype=np.int64).reshape(3, 8, 8)
    return out


def walloc_files(folder: Path, source: str) -> tuple[Path, Path]:
    """The (NAME.json, NAME.pth) pair in `folder`: RGB_16x if present, else the only pair."""
    pairs = sorted(p for p in folder.glob("*.pth") if p.with_suffix(".json").is_file())
    named = [p for p in pairs if p.name == WALLOC.weights_file]
    if named or len(pairs) == 1:
        pth = (named or pairs)[0]
        return pth.with_suffix(".json"), pth
    found = ", ".join(p.name for p in pairs) or "none"
    raise OtterliteError(f"WaLLoC checkpoint {source}: expected one NAME.json + NAME.pth pair (e.g. "
                         f"RGB_16x.json + RGB_16x.pth) in {folder}, found pairs: {found}")


def read_walloc_state(path: Path) -> dict:
    """torch.load(weights_only=True) of the published dict -> its model_state_dict."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs:
            raise OtterliteError(f"{path}: refused, it needs a full unpickler (it holds {needs.group(1)}); "
                                 f"otterlite reads only plain tensor files (torch.load weights_only=True): "
                                 f"re-save it as torch.save({{'model_state_dict': model.state_dict()}})") from None
        first = text.strip().splitlines()[-1].strip() if text.strip() else type(err).__name__
        raise OtterliteError(f"{path}: not a readable torch file ({first[:140]}); the file is truncated "
                             f"or corrupted: download it again") from None
    state = obj.get("model_state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OtterliteError(f"{path}: expected a dict with 'model_state_dict' (a state dict of tensors), "
                             f"as WaLLoC's published RGB_16x.pth")
    return state


def walloc_source(source: str, cache_dir: str | None) -> Path:
    """'default' | DIR | 'hub:OWNER/REPO[/NAME][@REV]' -> the local folder."""
    if source == "default":
        return default_dir(WALLOC)
    if source.startswith("hub:"):
        spec, _, revision = (source[len("hub:"):] or WALLOC.hub_default).partition("@")
        parts = [p for p in spec.split("/") if p]
        if len(parts) not in (2, 3):
            raise OtterliteError(f"checkpoint {source!r}: expected hub:OWNER/REPO[/NAME][@REVISION], "
                                 f"e.g. hub:{WALLOC.hub_default}")
        repo, name = "/".join(parts[:2]), parts[2] if len(parts) == 3 else "RGB_16x"
        fix = (f"download {name}.json and {name}.pth from {repo} on a connected machine and pass "
               f"--checkpoint DIR, or pass --cache-dir pointing at a Hugging Face cache that holds them")
        return fetch_hub_files(source, repo, [f"{name}.json", f"{name}.pth"], revision or None, cache_dir, fix)
    folder = Path(source)
    if not folder.is_dir():
        raise OtterliteError(f"--checkpoint {source}: no such directory; pass a directory with "
                             f"RGB_16x.json and RGB_16x.pth, 'default', or hub:danjacobellis/walloc")
    return folder


def load_walloc(source: str | None = None, cache_dir: str | None = None, with_decoder: bool = True):
    """-> (WallocModel in eval mode, Checkpoint with the config and numpy tensors).
    Without the decoder, `decoder.*` keys are not needed (the encoder's export)."""
    import torch

    from otterlite.models.walloc import WallocConfig, WallocModel

    source = source or "default"
    json_path, pth_path = walloc_files(walloc_source(source, cache_dir), source)
    raw, config_bytes = read_config(json_path)
    weights_bytes = pth_path.read_bytes()
    config = WallocConfig.from_dict(raw, str(json_path))
    state = read_walloc_state(pth_path)
    model = WallocModel(config, with_decoder=with_decoder)
    wanted = {k for k in model.state_dict()}
    if not with_decoder:
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        missing = sorted(wanted - set(state))[:3]
        unexpected = sorted(set(state) - wanted)[:3]
        shapes = [s.strip() for s in str(err).splitlines() if "size mismatch" in s][:2]
        detail = "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                         f"unexpected {unexpected}" if unexpected else ""] + shapes))
        raise OtterliteError(f"{pth_path}: the weights do not match the config {json_path.name} "
                             f"({detail[:300]})") from None
    digest = hashlib.sha256(config_bytes + b"\0" + weights_bytes).hexdigest()
    tensors = {k: v.detach().cpu().numpy() for k, v in state.items()}
    return model.eval(), Checkpoint(raw, tensors, digest, str(pth_path.parent))


def write_walloc_checkpoint(folder: str | Path, model, name: str = "RGB_16x") -> Path:
    """Write NAME.json + NAME.pth in the published layout (the dict with model_state_dict)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state}, folder / f"{name}.pth")
    return folder


def load_encoder_model(kind: str, source: str | None, n_ch: int | None = None, cache_dir: str | None = None,
                       with_decoder: bool = True):
    """-> (FrappeModel or WallocModel, Checkpoint) of an encoder kind ("frappe-encoder" or
    "walloc-encoder"); both have sensor_encoder(), encode(x uint8) -> [latents], decode([latents]) -> uint8."""
    if kind == "walloc-encoder":
        return load_walloc(source, cache_dir, with_decoder)
    return load_frappe(source, n_ch, cache_dir)
