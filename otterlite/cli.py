"""Command line: `otterlite COMMAND ...`. Each command is a library call; errors print one
line and exit with code 2."""
from __future__ import annotations

import argparse
import sys

from otterlite.errors import OtterliteError
from otterlite.files import check_writable, write_atomic, write_json

EPILOG = """examples:
  otterlite demo
  otterlite encode photo.png -o photo.otl --n-ch 12
  otterlite transcode photo.otl -o photo.jpg --k 1
  otterlite transcode-batch uploads/ jpegs/ --k 1 --workers 2
  otterlite decode photo.jpg -o photo.png
  otterlite decode photo.jpg -o photo.png --models models/ --runtime tflite
  otterlite info photo.otl
  otterlite export all --format onnx,tflite -o models/
  otterlite verify models/ --json parity.json
  otterlite info models/frappe-encoder.tflite
  otterlite bench --json bench.json
  otterlite setup tflite-runtime
  otterlite setup toolchains
  otterlite firmware models/ --target cortex-m4 -o fw/
  otterlite firmware run fw/ photo.png
checkpoints: 'default' (embedded), a directory with config.json + safetensors, or
hub:REPO/SUBDIR[@REVISION] (needs network; offline, download elsewhere and pass the directory)"""


SENSOR_CHECKPOINT_HELP = ("{which} checkpoint (default: embedded): FRAPPE default | DIR | hub:REPO/SUBDIR[@REV]; "
                          "WaLLoC default | DIR (NAME.json + NAME.pth) | hub:OWNER/REPO[/NAME][@REV]")


def add_checkpoint_args(p: argparse.ArgumentParser, frappe: bool = True, seaotter: bool = False,
                        defaults: bool = True, walloc: bool = False, sensor_help: str | None = None) -> None:
    """--checkpoint (FRAPPE), --seaotter-checkpoint and --walloc-checkpoint; a command without one of them still
    accepts the flag, to refuse it with the name of the flag that was meant (refuse_flag).
    defaults=False leaves them None, so the command can tell 'not given' from 'default'."""
    default = "default" if defaults else None
    p.add_argument("--checkpoint", default=default if frappe else None,
                   help=(sensor_help or "FRAPPE checkpoint: default | DIR | hub:REPO/SUBDIR[@REV] (default: embedded)")
                   if frappe else argparse.SUPPRESS)
    p.add_argument("--seaotter-checkpoint", default=default if seaotter else None,
                   help="SEA OTTER checkpoint: default | DIR | hub:REPO/SUBDIR[@REV] (default: embedded)"
                   if seaotter else argparse.SUPPRESS)
    if walloc:
        p.add_argument("--walloc-checkpoint", default=default,
                       help="WaLLoC checkpoint: default | DIR (NAME.json + NAME.pth) | hub:OWNER/REPO[/NAME][@REV] "
                            "(default: embedded; the published one is hub:danjacobellis/walloc)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache directory for hub: checkpoints")


def add_runtime_args(p: argparse.ArgumentParser, kind: str, runtimes: str) -> None:
    """--runtime (an integer runtime, all giving identical bytes, or float) and --models DIR."""
    from otterlite.workflow import runtimes_for

    p.add_argument("--runtime", default="numpy", choices=[*runtimes_for(kind), "float"],
                   help=f"engine of the exported integer {kind}: {runtimes} write identical bytes; "
                        f"float = the research float model")
    p.add_argument("--models", default=None, metavar="DIR",
                   help=f"use DIR/{kind}.spec from 'otterlite export' instead of freezing the checkpoint")


def refuse_with_models(command: str, args: argparse.Namespace, flag: str) -> None:
    """--models DIR holds the model: refuse its checkpoint flag beside it, and --runtime float."""
    if args.models:
        refuse_flag(command, flag, getattr(args, flag[2:].replace("-", "_")),
                    f"--models {args.models} already holds the model; give --models or {flag}, not both")
        refuse_flag(command, "--models", args.models if args.runtime == "float" else None,
                    "--runtime float runs the float research model of the checkpoint, not an export's spec")


def add_fidelity_args(p: argparse.ArgumentParser) -> None:
    """The fidelity target (otterlite.integer_spec.fidelity.Target); None = its default."""
    p.add_argument("--min-equal", type=float, default=None,
                   help="encoder: least share of latents equal to the float model (default 0.99)")
    p.add_argument("--max-lsb", type=int, default=None,
                   help="most LSB any encoder latent, or transform output on ordinary inputs, may differ (default 1)")
    p.add_argument("--min-within", type=float, default=None,
                   help="transforms: least share of all outputs within --max-lsb (default 0.999)")


def fidelity_target(args: argparse.Namespace):
    from otterlite.integer_spec.fidelity import Target

    given = {k: getattr(args, k) for k in ("min_equal", "max_lsb", "min_within") if getattr(args, k) is not None}
    return Target(**given)


def refuse_flag(command: str, flag: str, value, why: str) -> None:
    if value is not None:
        raise OtterliteError(f"{command} {flag}: {why}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otterlite", description="FRAPPE / SEA OTTER learned image codec toolchain.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole workflow on a bundled photo with the embedded models",
                       epilog="examples:\n  otterlite demo --out /tmp/demo --n-ch 6\n  otterlite demo --codec walloc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="frappe", choices=["frappe", "walloc"], help="sensor codec (default frappe)")
    p.add_argument("--image", default=None, help="photo to use (default: scikit-image's astronaut.png)")
    p.add_argument("--out", default="otterlite-demo", help="output folder (default: otterlite-demo)")
    p.add_argument("--n-ch", type=int, default=None, help="latent channels (default: all trained)")
    p.add_argument("--k", type=int, default=1, help="SEA OTTER operating point (default: 1)")

    p = sub.add_parser("encode", help="sensor: image -> .otl latent container",
                       epilog="examples:\n  otterlite encode photo.png -o photo.otl --models out/ --runtime numpy\n"
                              "  otterlite encode photo.png -o photo.otl --codec walloc --latent-coder webp\n"
                              "(--models: the spec from 'otterlite export', so no torch is needed)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, help="output .otl file")
    p.add_argument("--codec", default="frappe", choices=["frappe", "walloc"],
                   help="sensor codec (default frappe); --checkpoint is that codec's checkpoint")
    p.add_argument("--latent-coder", default="rice", choices=["rice", "webp"],
                   help="latent payload: rice (ours, MCU-friendly, default) or webp (WaLLoC's published layout, "
                        "--codec walloc only); WaLLoC prints both sizes")
    p.add_argument("--n-ch", type=int, default=None, help="FRAPPE latent channels 1..n_trained (default: n_trained)")
    add_runtime_args(p, "frappe-encoder", "numpy (streaming sensor runtime, default), onnx, tflite, torch (integer "
                     "reference), c (the generated C, compiled on the fly)")
    add_checkpoint_args(p, defaults=False, sensor_help=SENSOR_CHECKPOINT_HELP.format(which="--codec's"))

    p = sub.add_parser("transcode", help="cloud: .otl -> its codec's decoder (FRAPPE or WaLLoC, float) -> SEA OTTER "
                       "forward -> JPEG (--checkpoint: that codec's checkpoint)",
                       epilog="examples:\n  otterlite transcode photo.otl -o photo.jpg --k 1\n"
                              "  otterlite transcode photo.otl -o photo.jpg --models out/ --runtime onnx\n"
                              "(the forward transform is the exported integer one; the JPEG bytes do not depend on "
                              "--runtime)", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("container")
    p.add_argument("-o", "--output", required=True, help="output .jpg file")
    p.add_argument("--k", type=int, default=0, help="operating point (qtable index, default 0)")
    add_runtime_args(p, "seaotter-forward", "numpy (default), onnx, tflite, torch (integer reference)")
    add_checkpoint_args(p, seaotter=True, defaults=False,
                        sensor_help=SENSOR_CHECKPOINT_HELP.format(which="the container's codec's"))

    p = sub.add_parser("transcode-batch", help="cloud, at fleet scale: many .otl containers -> JPEGs on Ray Data "
                       "(local by default, or a Ray cluster)",
                       epilog="examples:\n  otterlite transcode-batch uploads/ jpegs/ --k 1 --workers 2\n"
                              "  otterlite transcode-batch 'uploads/**/*.otl' jpegs/ --models out/\n"
                              "  otterlite transcode-batch shards/ out/ --format parquet   (Parquet shards of (name, "
                              "container) in, of (name, jpeg) out)\n"
                              "  RAY_ADDRESS=ray://head:10001 otterlite transcode-batch list.txt jpegs/\n"
                              "Each output is byte-identical to 'otterlite transcode' of its input; failed inputs are "
                              "listed in OUT/failures.tsv; a re-run skips the outputs already written.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="a folder (searched recursively), a glob, or a list file of .otl files "
                   "or of .parquet shards")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--k", type=int, default=0, help="operating point (qtable index, default 0)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="containers per actor call (default 16)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "parquet"],
                   help="jpeg: OUT/NAME.jpg per input (default); parquet: shards OUT/part-NNNNN.parquet")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else Ray in this "
                   "process)")
    add_runtime_args(p, "seaotter-forward", "numpy (default), onnx, tflite, torch (integer reference)")
    add_checkpoint_args(p, seaotter=True, defaults=False)

    p = sub.add_parser("decode", help="consumer: SEA OTTER JPEG -> PNG",
                       epilog="examples:\n  otterlite decode photo.jpg -o photo.png\n"
                              "  otterlite decode photo.jpg -o photo.png --models out/   (numpy and Pillow only)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jpeg")
    p.add_argument("-o", "--output", required=True, help="output .png file")
    p.add_argument("--force", action="store_true", help="decode a JPEG without (or with another) otterlite marker")
    add_runtime_args(p, "seaotter-inverse", "numpy (default), onnx, tflite, torch (integer reference), c (the "
                     "generated C, compiled on the fly)")
    add_checkpoint_args(p, frappe=False, seaotter=True, defaults=False)

    p = sub.add_parser("export", help="freeze a model into its integer spec, check its fidelity to the float model "
                       "and write deployable files",
                       epilog="examples:\n  otterlite export all --format onnx,tflite -o out/\n"
                              "  otterlite export frappe-encoder -o out/ --input-size 512x512 --calibration photos/\n"
                              "  otterlite export seaotter-inverse -o out/ --seaotter-checkpoint ckpt/\n"
                              "  otterlite export walloc-encoder -o out/ --walloc-checkpoint hub:danjacobellis/walloc\n"
                              "a model below its fidelity target stops the export (exit 2, nothing written) unless "
                              "--allow-low-fidelity", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="frappe-encoder, walloc-encoder, seaotter-inverse, seaotter-forward (or 'all')")
    p.add_argument("--format", default="onnx", help="comma-separated: onnx, tflite (default: onnx)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--n-ch", type=int, default=None, help="FRAPPE latent channels (default: n_trained)")
    p.add_argument("--input-size", default="512x512", help="HxW of the exported graphs (default 512x512)")
    p.add_argument("--k", type=int, default=None, help="SEA OTTER operating point recorded with the forward transform")
    p.add_argument("--weight-bits", default=None,
                   help="encoder weight bits: auto (default: per scale group the fewest of 8..12 that meet "
                        "the fidelity target on the calibration photos) or 2..12 (9..12 split into int8 parts)")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="photos for --weight-bits auto and the encoder's fidelity (default: bundled sample photos)")
    add_fidelity_args(p)
    p.add_argument("--allow-low-fidelity", action="store_true",
                   help="export even when a model misses its fidelity target (a warning instead of an error)")
    add_checkpoint_args(p, seaotter=True, defaults=False, walloc=True)

    p = sub.add_parser("verify", help="run every artifact in DIR on every backend; exit 0 only if all are bit-exact "
                       "and faithful to the float model",
                       epilog="examples:\n  otterlite verify out/ --json parity.json\n"
                              "  otterlite verify out/ --backends torch-int numpy 'ort-*' --html report.html "
                              "--junit junit.xml\n"
                              "exit 0: every backend exact and every model meets its fidelity target; 1 otherwise; "
                              "2 on bad input",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--images", nargs="+", default=None, help="photos to verify on (default: bundled photos)")
    p.add_argument("--backends", nargs="+", default=None, help="subset of backends (default: all)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--html", default=None, help="write a self-contained HTML report here (matrix, divergences, "
                   "fidelity histograms, pictures, provenance; needs otterlite[report])")
    p.add_argument("--junit", default=None, help="write JUnit XML here (a case per model and backend, and per "
                   "fidelity target)")
    add_fidelity_args(p)

    p = sub.add_parser("info", help="describe a .otl container, SEA OTTER JPEG, integer .spec, exported .onnx / "
                       ".tflite, or an export's manifest.json",
                       epilog="examples:\n  otterlite info out/frappe-encoder.spec   (stages, weight bits, thresholds, "
                              "bounds)\n  otterlite info out/manifest.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")

    p = sub.add_parser("bench", help="single-thread encoder and consumer throughput on every available backend",
                       epilog="examples:\n  otterlite bench --json bench.json\n"
                              "  otterlite bench --batch --files 160   (transcode-batch: 1 and 2 Ray workers against "
                              "a transcode loop)", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds (one run of every backend each), the best run counts (default 5)")
    p.add_argument("--batch", action="store_true", help="instead: the scaling of transcode-batch on Ray")
    p.add_argument("--files", type=int, default=None, help="with --batch: 512x512 containers to transcode (default 160)")

    p = sub.add_parser("firmware", help="generate the C99 streaming sensor encoder from an export DIR, build it on "
                       "the host and print its resource report ('firmware run OUT IMAGE...' checks it bit-exact)",
                       epilog="examples:\n  otterlite export frappe-encoder -o models/\n"
                              "  otterlite firmware models/ --target cortex-m4,rpi4 -o fw/   (report also in fw/report.json)\n"
                              "  otterlite firmware run fw/ photo.png other.jpg\n"
                              "  otterlite export walloc-encoder -o models/ && otterlite firmware models/ --codec walloc "
                              "-o fw-walloc/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="folder from 'otterlite export' holding frappe-encoder.spec "
                   "(walloc-encoder.spec with --codec walloc)")
    p.add_argument("--codec", default="frappe", choices=["frappe", "walloc"], help="sensor codec (default frappe)")
    p.add_argument("--target", default="all",
                   help="cortex-m4, cortex-m7, esp32-s3, rpi-zero2, rpi4 (comma-separated) or all (default)")
    p.add_argument("-o", "--output", required=True, help="output folder for the C sources")
    p.add_argument("--json", default=None, help="also write the report as JSON here")

    p = sub.add_parser("firmware-run", prog="otterlite firmware run",
                       help="('otterlite firmware run OUT IMAGE...') build OUT with the host compiler and check every "
                            "image bit-exact against the PyTorch integer reference",
                       epilog="example: otterlite firmware run fw/ photo.png --sanitize")
    p.add_argument("folder", metavar="OUT", help="folder written by 'otterlite firmware'")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--sanitize", action="store_true", help="build with -fsanitize=address,undefined")

    p = sub.add_parser("setup", help="install what a backend needs outside pip",
                       epilog="examples:\n  otterlite setup tflite-runtime   (numpy<2 venv for tflite-runtime 2.14; location: "
                              "$OTTERLITE_TFLITE_RUNTIME_VENV or ~/.cache/otterlite/tflite-runtime-venv)\n"
                              "  otterlite setup toolchains       (apt-get: ARM cross compilers and QEMU for the "
                              "qemu-* backends, libjpeg's headers for 'decode --runtime c')\n"
                              "  otterlite setup arm-runtimes     (arm64 Python + numpy, Pillow, onnxruntime, LiteRT, and "
                              "armhf Python + numpy, under qemu-user for the *-a53/-a72/-a76/-max/-a7 backends "
                              "(after setup toolchains); location: $OTTERLITE_ARM_RUNTIMES or "
                              "~/.cache/otterlite/arm-runtimes)\n"
                              "  otterlite setup chromium         (apt-get: headless Chromium, which renders 'verify --html' "
                              "reports in the tests)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["tflite-runtime", "toolchains", "arm-runtimes", "chromium"])
    return parser


def run(args: argparse.Namespace) -> int:
    from otterlite import workflow

    if args.command == "demo":
        from otterlite.demo import run_demo

        if args.codec == "walloc" and args.n_ch is not None:
            raise OtterliteError("--n-ch applies to FRAPPE (its channel snapshots); WaLLoC has 12 latent channels")
        result = run_demo(args.image, args.out, args.n_ch, args.k, codec=args.codec)
        return 0 if result["exact"] and result["faithful"] else 1
    elif args.command == "encode":
        refuse_flag("encode", "--seaotter-checkpoint", args.seaotter_checkpoint,
                    "encode runs the sensor encoder only; its checkpoint is --checkpoint")
        refuse_with_models("encode", args, "--checkpoint")
        st = workflow.encode_file(args.image, args.output, args.checkpoint, args.n_ch, args.cache_dir,
                                  args.runtime, args.models, args.codec, args.latent_coder)
        others = "".join(f"; {coder} layout would be {size} bytes ({8 * size / st.pixels:.4f} bpp)"
                         for coder, size in (st.other_sizes or {}).items())
        print(f"wrote {st.path}: {st.size} bytes, {st.bpp:.4f} bpp ({args.latent_coder}){others}")
    elif args.command == "transcode":
        refuse_with_models("transcode", args, "--seaotter-checkpoint")
        st = workflow.transcode_file(args.container, args.output, args.k, args.checkpoint,
                                     args.seaotter_checkpoint, args.cache_dir, args.runtime, args.models)
        print(f"wrote {st.path}: {st.size} bytes, {st.bpp:.4f} bpp")
    elif args.command == "transcode-batch":
        from otterlite.batch import transcode_batch

        refuse_with_models("transcode-batch", args, "--seaotter-checkpoint")
        summary = transcode_batch(args.src, args.out, args.k, args.checkpoint, args.seaotter_checkpoint,
                                  args.cache_dir, args.runtime, args.models, args.workers, args.batch_size,
                                  args.format, args.address)
        print("\n".join(summary.lines()))
        return 0 if not summary.failed else 1
    elif args.command == "decode":
        refuse_flag("decode", "--checkpoint", args.checkpoint,
                    "decode uses no FRAPPE model (only the SEA OTTER inverse); did you mean --seaotter-checkpoint?")
        refuse_with_models("decode", args, "--seaotter-checkpoint")
        st = workflow.decode_file(args.jpeg, args.output, args.seaotter_checkpoint, args.cache_dir, args.force,
                                  args.runtime, args.models)
        print(f"wrote {st.path}: {st.size} bytes")
    elif args.command == "export":
        from otterlite.export import MODELS, export

        models = list(MODELS) if args.models == ["all"] else args.models
        export(models, args.format.split(","), args.output, args.checkpoint, args.seaotter_checkpoint,
               args.n_ch, args.input_size, args.k, args.weight_bits, args.cache_dir, args.calibration,
               fidelity_target(args), args.allow_low_fidelity,
               given={"--min-equal": args.min_equal, "--min-within": args.min_within},
               walloc_checkpoint=args.walloc_checkpoint)
    elif args.command == "verify":
        from otterlite import reports
        from otterlite.export import read_manifest
        from otterlite.verify import format_report, report_data, verify

        for path in (args.json, args.html, args.junit):  # before minutes of work, not after
            check_writable(path)
        if args.html:
            reports.check_matplotlib()
        report = verify(args.folder, args.images, args.backends, target=fidelity_target(args),
                        pictures=bool(args.html))
        print("\n".join(format_report(report)))
        if args.json:
            write_json(args.json, report_data(report))
        if args.junit:
            write_atomic(args.junit, reports.junit_xml(report))
            print(f"wrote {args.junit}")
        if args.html:
            print("drawing the HTML report ...")
            write_atomic(args.html, reports.html_report(report, read_manifest(args.folder), args.folder).encode())
            print(f"wrote {args.html}")
        return 0 if report.exact and report.faithful else 1
    elif args.command == "info":
        from otterlite.info import describe

        print("\n".join(describe(args.file)))
    elif args.command == "bench":
        from otterlite import bench

        if args.batch:
            from otterlite.batch import bench_scaling

            refuse_flag("bench --batch", "--repeats", args.repeats, "the batch bench runs once per worker count")
            if args.files is not None and args.files < 8:
                raise OtterliteError(f"--files {args.files}: give 8 or more (one batch per worker and more)")
            result = bench_scaling(args.files or 160)
        else:
            refuse_flag("bench", "--files", args.files, "only the batch bench transcodes files; add --batch")
            repeats = 5 if args.repeats is None else args.repeats
            if repeats < 1:
                raise OtterliteError(f"--repeats {repeats}: give 1 or more")
            result = bench.bench(repeats)
            print("\n".join(bench.summary(result)))
        if args.json:
            write_json(args.json, result)
    elif args.command == "firmware":
        from otterlite.firmware import firmware
        from otterlite.firmware_report import format_report
        from otterlite.workflow import CODECS

        result = firmware(args.folder, args.target, args.output, CODECS[args.codec])
        print("\n".join(format_report(result)))
        if args.json:
            write_json(args.json, result)
    elif args.command == "firmware-run":
        from otterlite.firmware import run_firmware

        return 0 if run_firmware(args.folder, args.images, args.sanitize) else 1
    elif args.command == "setup" and args.what == "arm-runtimes":
        from otterlite import arm_env

        arm_env.setup()
    elif args.command == "setup" and args.what == "chromium":
        from otterlite.reports import setup_chromium

        setup_chromium()
    elif args.command == "setup" and args.what == "toolchains":
        from otterlite.firmware_sim.cross import setup_toolchains

        setup_toolchains()
    elif args.command == "setup":
        from otterlite import tflite_runtime_env

        tflite_runtime_env.setup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["firmware", "run"]:  # `firmware DIR` and `firmware run OUT` share a name
        argv = ["firmware-run", *argv[2:]]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except OtterliteError as err:
        print(f"otterlite: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        fix = "pass --models DIR (a folder from 'otterlite export'), or install otterlite[torch]" \
            if err.name == "torch" and args.command in ("encode", "decode") else "pip install 'otterlite[all]'"
        print(f"otterlite: error: {err.name or err} is not installed; {fix}", file=sys.stderr)
        return 2
