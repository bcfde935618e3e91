"""The cloud stage at fleet scale: `otterlite transcode-batch`, the single-file transcode
(workflow.transcode_bytes) over many containers on Ray Data.

Inputs: a folder (searched recursively), a glob, or a list file (one path per line), of
`.otl` files or of Parquet shards with columns `name` (string) and `container` (binary).
Each input is named by its path relative to the deepest folder common to all inputs, without
the suffix (a Parquet row by its `name`); the output is OUT/NAME.jpg, or with --format
parquet, Parquet shards OUT/part-NNNNN.parquet with columns `name` and `jpeg`.

Ray runs in this process (`ray.init(num_cpus=workers + 1)`) unless RAY_ADDRESS or --address
names a cluster. Each worker is a Ray actor that loads the models once and transcodes
whole batches; a container that fails (bad bytes, another checkpoint) is a row of
OUT/failures.tsv (input, reason), never a stopped run. Outputs are written atomically, so
a re-run skips every output already there: a killed run resumes.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import resource
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from otterlite.errors import OtterliteError

FAILURES = "failures.tsv"
FORMATS = ("jpeg", "parquet")


@dataclass
class Inputs:
    """What SRC names: `.otl` files {name: path}, or Parquet shards (paths)."""
    files: dict[str, str] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)


def find_inputs(src: str) -> Inputs:
    """SRC -> the containers it names (see the module docstring); refuses an empty SRC and a
    mix of .otl files and Parquet shards."""
    path = Path(src)
    if path.is_dir():
        found = [str(p) for p in sorted(path.rglob("*")) if p.suffix in (".otl", ".parquet") and p.is_file()]
    elif path.is_file() and path.suffix not in (".otl", ".parquet"):
        base = path.parent
        try:
            lines = path.read_text().splitlines()
        except (UnicodeDecodeError, OSError) as err:
            raise OtterliteError(f"{src}: not a readable list file ({err}); give a folder, a glob, or a text "
                                 f"file with one .otl or .parquet path per line") from None
        found = [str(base / line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        missing = [f for f in found if not Path(f).is_file()]
        if missing:
            raise OtterliteError(f"{src}: {len(missing)} listed files do not exist, the first {missing[0]}; "
                                 f"fix the list (paths relative to {base})")
    else:
        found = sorted(p for p in glob.glob(src, recursive=True) if Path(p).is_file())
    otl = [f for f in found if f.endswith(".otl")]
    shards = [f for f in found if f.endswith(".parquet")]
    if not otl and not shards:
        raise OtterliteError(f"{src}: no .otl containers or .parquet shards found; give a folder, a glob "
                             f"(quoted, e.g. 'uploads/**/*.otl') or a list file")
    if otl and shards:
        raise OtterliteError(f"{src}: holds both .otl files ({len(otl)}) and Parquet shards ({len(shards)}); "
                             f"give one kind per run")
    if shards:
        return Inputs(shards=shards)
    base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in otl])
    return Inputs(files={os.path.relpath(os.path.abspath(f), base)[:-len(".otl")]: f for f in otl})


def row_groups(shard: str) -> int:
    """Row groups of a Parquet shard of (name string, container binary); refuses another schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(shard)
    except Exception as err:
        raise OtterliteError(f"{shard}: not a readable Parquet file ({str(err)[:120]}); give shards of "
                             f"(name, container) written with pyarrow") from None
    schema = meta.schema_arrow
    for column, kinds in (("name", (pa.string(), pa.large_string())), ("container", (pa.binary(), pa.large_binary()))):
        if column not in schema.names or schema.field(column).type not in kinds:
            raise OtterliteError(f"{shard}: needs a column {column!r} of type {kinds[0]}; it has "
                                 f"{', '.join(f'{f.name}: {f.type}' for f in schema)}")
    return meta.num_row_groups


def jpeg_path(out: Path, name: str) -> Path:
    """OUT/NAME.jpg; a name from a Parquet row is untrusted: it must stay inside OUT."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise OtterliteError(f"output name {name!r} is not a relative path inside the output folder; rename the "
                             f"row (no '..', not absolute)")
    return out / f"{name}.jpg"


def done_names(out: Path, fmt: str) -> set[str]:
    """Names whose output is complete (written atomically by an earlier run)."""
    if fmt == "jpeg":
        return {str(p.relative_to(out))[:-len(".jpg")] for p in out.rglob("*.jpg")}
    import pyarrow.parquet as pq

    names = set()
    for shard in sorted(out.glob("part-*.parquet")):
        try:
            names.update(pq.read_table(shard, columns=["name"]).column("name").to_pylist())
        except Exception as err:
            raise OtterliteError(f"{shard}: an output shard that cannot be read ({str(err)[:120]}); move it out "
                                 f"of {out} and re-run") from None
    return names


class Transcoder:
    """One Ray actor: the SEA OTTER forward transform and the FRAPPE decoders (one per
    channel count the containers hold) loaded once, then whole batches of containers."""

    def __init__(self, settings: dict):
        import torch

        from otterlite import workflow

        torch.set_num_threads(1)  # one worker = one CPU (Ray gives each actor num_cpus=1)
        self.s = settings
        self.out = Path(settings["out"])
        self.forward = workflow.forward_from_spec(settings["forward_spec"], settings["runtime"],
                                                  settings["seaotter_checkpoint"], settings["cache_dir"])
        self.decoders: dict[int, object] = {}

    def decoder(self, n_ch: int):
        if n_ch not in self.decoders:
            from otterlite.models.checkpoint import load_frappe

            try:
                self.decoders[n_ch] = load_frappe(self.s["checkpoint"], n_ch, self.s["cache_dir"])
            except OtterliteError as err:
                self.decoders[n_ch] = err
        if isinstance(self.decoders[n_ch], OtterliteError):
            raise self.decoders[n_ch]
        return self.decoders[n_ch]

    def transcode(self, name: str, source: str, data: bytes | OtterliteError | None) -> dict:
        """One container (its bytes, or None: read the file `source`) -> a result row."""
        from otterlite.container import read_header
        from otterlite.files import write_atomic
        from otterlite.workflow import transcode_bytes

        row = {"name": name, "source": source, "status": "done", "reason": "", "pixels": 0, "jpeg": b"",
               "worker_mb": 0.0}
        try:
            if isinstance(data, OtterliteError):
                raise data
            if data is None:
                data = Path(source).read_bytes()
            path = jpeg_path(self.out, name)  # refuses a name that would leave OUT, before any work
            frame, _ = read_header(data, source)
            if frame.codec != "FRAPPE":
                raise OtterliteError(f"{source}: a {frame.codec} container; transcode-batch decodes FRAPPE "
                                     f"containers only (use 'otterlite transcode' for {frame.codec})")
            model, ckpt = self.decoder(frame.n_ch)
            jpeg = transcode_bytes(data, self.s["k"], model, ckpt, self.forward, source)
            row["pixels"] = frame.width * frame.height
            if self.s["format"] == "jpeg":
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, jpeg)
            else:
                row["jpeg"] = jpeg
        except OtterliteError as err:
            row.update(status="failed", reason=str(err))
        except Exception as err:  # a bug must not stop a fleet's run: recorded, with its type
            row.update(status="failed", reason=f"{type(err).__name__}: {err}")
        return row

    def __call__(self, batch: dict) -> dict:
        """A batch of {name, path} (.otl files) or of {shard, row_group} (Parquet) -> one row per
        container: name, source, status (done | skipped | failed), reason, pixels, jpeg, and the
        actor's peak memory worker_mb."""
        if "shard" in batch:  # the names of earlier runs' outputs are only known here
            items = [item for shard, group in zip(batch["shard"], batch["row_group"])
                     for item in shard_rows(str(shard), int(group))]
        else:
            items = [(str(n), str(p), None) for n, p in zip(batch["name"], batch["path"])]
        skip = self.s["skip"]
        rows = [{"name": n, "source": s, "status": "skipped", "reason": "", "pixels": 0, "jpeg": b"", "worker_mb": 0.0}
                if n in skip else self.transcode(n, s, d) for n, s, d in items]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this actor's peak RSS (Linux: KB)
        for row in rows:
            row["worker_mb"] = peak
        if not rows:
            return {key: [] for key in ("name", "source", "status", "reason", "pixels", "jpeg", "worker_mb")}
        return {key: [r[key] for r in rows] for key in rows[0]}


def shard_rows(shard: str, group: int) -> list[tuple[str, str, bytes | OtterliteError]]:
    """Row group `group` of a Parquet shard -> (name, "shard:name", container bytes); a row
    group that cannot be read is one item holding the error."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(shard).read_row_group(group, columns=["name", "container"])
    except Exception as err:
        return [(f"{shard}#{group}", f"{shard} row group {group}",
                 OtterliteError(f"{shard}: row group {group} is unreadable ({str(err)[:120]})"))]
    return [(str(n), f"{shard}:{n}", c or b"") for n, c in zip(table.column("name").to_pylist(),
                                                                table.column("container").to_pylist())]


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    pixels: int = 0
    seconds: float = 0.0
    first_result_s: float = 0.0  # Ray and actor start-up, and the first batch
    first_batch: int = 0
    worker_mb: float = 0.0

    @property
    def steady_rate(self) -> float:
        """Files/s after the first result (start-up excluded)."""
        later = self.done - self.first_batch
        return later / (self.seconds - self.first_result_s) if later > 0 and self.seconds > self.first_result_s else 0.0

    def lines(self) -> list[str]:
        rate = self.done / self.seconds if self.seconds else 0.0
        return [f"{self.done} transcoded, {self.skipped} skipped (already done), {self.failed} failed; "
                f"{self.seconds:.1f} s, {rate:.2f} files/s, {self.pixels / 1e6 / max(self.seconds, 1e-9):.3f} MPx/s"]


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to HOST:PORT of `address` (ray://HOST:PORT or HOST:PORT) first: ray.init
    itself retries an unreachable cluster for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise OtterliteError(f"Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise OtterliteError(f"Ray address {address}: unreachable ({err.strerror or err}); start the cluster, fix "
                             f"--address / RAY_ADDRESS, or unset it to run Ray on this machine") from None


def start_ray(workers: int, address: str | None):
    """Ray in this process (num_cpus = workers + 1: the actors, and Ray Data's read tasks),
    or the cluster at `address` / RAY_ADDRESS."""
    if importlib.util.find_spec("ray") is None:
        raise OtterliteError("transcode-batch runs on Ray Data, which is not installed; "
                             "pip install 'otterlite[ray]'")
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    logging.getLogger("ray").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="ray")
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=workers + 1, include_dashboard=False,  # one CPU beyond the actors: reading shards logging_level="ERROR", log_to_driver=False,
                     object_store_memory=256 << 20)
    except Exception as err:  # ConnectionError, RuntimeError, TimeoutError, ...
        raise OtterliteError(f"could not start or reach Ray at {address or 'this machine'} "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); "
                             f"check --address / RAY_ADDRESS (unset it to run locally)") from None
    import ray.data

    for name in ("ray", "ray.data"):  # Ray Data sets its own levels on import; our progress lines replace its log
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False  # the driver runs Ray Data's scheduler: keep its side work small
    context.enable_get_object_locations_for_metrics = False
    return ray


def check_output(out: Path) -> None:
    """OUT, or the folder it will be made in, must be a writable folder (nothing is made yet)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise OtterliteError(f"{out}: cannot write there ({existing} {what}); give a writable OUT folder")


def transcode_batch(src: str, out: str | Path, k: int = 0, checkpoint: str | None = None,
                    seaotter_checkpoint: str | None = None, cache_dir: str | None = None, runtime: str = "numpy",
                    models: str | None = None, workers: int = 2, batch_size: int = 16, fmt: str = "jpeg",
                    address: str | None = None, say=None) -> Summary:
    """Transcode every container SRC names into OUT (module docstring); bytes identical to
    `otterlite transcode` of each file. -> Summary; failures in OUT/failures.tsv."""
    from otterlite import workflow

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if fmt not in FORMATS:
        raise OtterliteError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if workers < 1 or batch_size < 1:
        raise OtterliteError(f"--workers {workers} --batch-size {batch_size}: both must be 1 or more")
    if importlib.util.find_spec("torch") is None:
        raise OtterliteError("transcode-batch runs the cloud's FRAPPE decoder, a float torch model, and torch is "
                             "not installed; install otterlite[torch] (torch==2.13.0 first)")
    inputs = find_inputs(src)
    groups = [{"shard": shard, "row_group": g} for shard in inputs.shards for g in range(row_groups(shard))]
    out = Path(out)
    check_output(out)
    workflow.check_runtime(runtime)
    forward_spec, name = (None, None) if runtime == "float" else \
        workflow.deployed_spec("seaotter-forward", models, seaotter_checkpoint, cache_dir=cache_dir)
    forward = workflow.forward_from_spec(forward_spec, runtime, seaotter_checkpoint, cache_dir, name)
    forward.qtable(k)  # a bad --k is refused before Ray starts
    from otterlite.models.checkpoint import FRAPPE, read_checkpoint

    read_checkpoint(checkpoint, FRAPPE, cache_dir)  # a bad --checkpoint too
    out.mkdir(parents=True, exist_ok=True)
    done = done_names(out, fmt)
    summary = Summary()
    pending = {n: p for n, p in inputs.files.items() if n not in done}
    summary.skipped = len(inputs.files) - len(pending)
    if inputs.files and not pending:
        say(f"transcode-batch: all {len(inputs.files)} outputs are already in {out}")
        write_failures(out, [])
        return summary
    ray = start_ray(workers, address)
    settings = {"out": str(out.resolve()), "k": k, "checkpoint": checkpoint, "cache_dir": cache_dir,
                "runtime": runtime, "forward_spec": forward_spec, "seaotter_checkpoint": seaotter_checkpoint,
                "format": fmt, "skip": done if inputs.shards else set()}
    if inputs.shards:  # one item per row group, read by the actor (Ray's own Parquet reader needs aiohttp)
        dataset = ray.data.from_items(groups, override_num_blocks=min(max(workers, len(groups)), 10000))
        batch_size, total = 1, None
    else:
        dataset = ray.data.from_items([{"name": n, "path": p} for n, p in sorted(pending.items())],
                                      override_num_blocks=min(max(workers, -(-len(pending) // batch_size)), 10000))
        total = len(pending)
    results = dataset.map_batches(Transcoder, fn_constructor_args=(settings,), batch_size=batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
    failures, shard_rows = [], []
    start, last = time.monotonic(), 0.0
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            if not summary.first_result_s:
                summary.first_result_s = time.monotonic() - start
                summary.first_batch = int(sum(batch["status"] == "done"))
            summary.worker_mb = max([summary.worker_mb, *map(float, batch["worker_mb"])])
            for name, source, status, reason, pixels, jpeg in zip(batch["name"], batch["source"], batch["status"],
                                                                   batch["reason"], batch["pixels"], batch["jpeg"]):
                if status == "failed":
                    failures.append((str(source), str(reason)))
                    summary.failed += 1
                elif status == "skipped":
                    summary.skipped += 1
                else:
                    summary.done += 1
                    summary.pixels += int(pixels)
                    if fmt == "parquet":
                        shard_rows.append((str(name), bytes(jpeg)))
            if len(shard_rows) >= 1000:
                write_shard(out, shard_rows)
                shard_rows = []
            if time.monotonic() - last > 2.0:
                last = time.monotonic()
                seen = summary.done + summary.failed + (summary.skipped if inputs.shards else 0)
                say(f"transcode-batch: {seen}{f'/{total}' if total else ''} containers, {summary.failed} failed, "
                    f"{summary.done / (last - start):.2f} files/s")
        if shard_rows:
            write_shard(out, shard_rows)
    finally:
        ray.shutdown()
    summary.seconds = time.monotonic() - start
    write_failures(out, failures)
    return summary


def write_shard(out: Path, rows: list[tuple[str, bytes]]) -> Path:
    """One Parquet shard (name, jpeg), numbered after the shards already in OUT; atomic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from otterlite.files import write_atomic

    number = len(list(out.glob("part-*.parquet")))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"name": [r[0] for r in rows], "jpeg": [r[1] for r in rows]},
                            schema=pa.schema([("name", pa.string()), ("jpeg", pa.binary())])), sink)
    return write_atomic(out / f"part-{number:05d}.parquet", sink.getvalue().to_pybytes())


def write_failures(out: Path, failures: list[tuple[str, str]]) -> Path:
    """OUT/failures.tsv: one `input<TAB>reason` line per container that failed in this run."""
    from otterlite.files import write_atomic

    text = "".join(f"{s}\t{r.replace(chr(9), ' ').replace(chr(10), ' ')}\n" for s, r in sorted(failures))
    return write_atomic(out / FAILURES, ("input\treason\n" + text).encode())


def bench_scaling(files: int = 160, size: int = 512, say=print) -> dict:
    """files/s of transcode-batch with 1 and 2 workers on `files` size x size containers,
    against transcode_file in a loop (what a script calling the single-file command's
    library function does: models loaded per file), in one run; and one worker's memory."""
    import tempfile

    import numpy as np

    from otterlite.container import write_container
    from otterlite.export import export
    from otterlite.images import load_rgb, pad_to_multiple, sample_photo
    from otterlite.runtime import load_encoder_spec
    from otterlite.workflow import encode_spec, transcode_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        say(f"bench transcode-batch: exporting, then encoding {files} {size}x{size} containers")
        export(["frappe-encoder", "seaotter-forward"], ["onnx"], tmp / "models", input_size=f"{size}x{size}",
               say=lambda line: None)
        spec = load_encoder_spec(tmp / "models")
        photos = [pad_to_multiple(load_rgb(sample_photo(n)), size) for n in ("astronaut.png", "coffee.png",
                                                                             "chelsea.png", "motorcycle_right.png")]
        rng = np.random.default_rng(0)
        for i in range(files):
            photo = photos[i % len(photos)]
            y, x = (int(rng.integers(0, photo.shape[d] - size + 1)) for d in (0, 1))
            frame = encode_spec(spec, np.ascontiguousarray(photo[y:y + size, x:x + size]), "numpy")
            (tmp / "src").mkdir(exist_ok=True)
            (tmp / "src" / f"f{i:04d}.otl").write_bytes(write_container(frame))
        loop_files = min(files, 24)
        start = time.monotonic()
        (tmp / "loop").mkdir()
        for i in range(loop_files):
            transcode_file(tmp / "src" / f"f{i:04d}.otl", tmp / "loop" / f"f{i:04d}.jpg", models=str(tmp / "models"))
        loop_rate = loop_files / (time.monotonic() - start)
        say(f"  transcode_file loop: {loop_rate:.2f} files/s ({loop_files} files)")
        result = {"files": files, "size": size, "cpus": os.cpu_count(), "loop_files_per_s": loop_rate, "workers": {}}
        for workers in (1, 2):
            s = transcode_batch(str(tmp / "src"), tmp / f"out{workers}", models=str(tmp / "models"), workers=workers,
                                say=lambda line: None)
            identical = all((tmp / f"out{workers}" / f"f{i:04d}.jpg").read_bytes() ==
                            (tmp / "loop" / f"f{i:04d}.jpg").read_bytes() for i in range(loop_files))
            result["workers"][workers] = {"files_per_s": s.done / s.seconds, "steady_files_per_s": s.steady_rate,
                                          "start_up_s": s.first_result_s, "worker_peak_mb": s.worker_mb,
                                          "identical_to_loop": identical}
            say(f"  {workers} worker(s): {s.done / s.seconds:.2f} files/s over the run, {s.steady_rate:.2f} after "
                f"the first result ({s.first_result_s:.1f} s start-up); worker peak {s.worker_mb:.0f} MB; "
                f"bytes identical to the loop: {identical}")
        one, two = result["workers"][1], result["workers"][2]
        result["scaling_2_over_1"] = two["steady_files_per_s"] / one["steady_files_per_s"]
        say(f"  2 workers / 1 worker (after start-up): {result['scaling_2_over_1']:.2f}x; 2 workers / loop: "
            f"{two['steady_files_per_s'] / loop_rate:.2f}x")
    return result
