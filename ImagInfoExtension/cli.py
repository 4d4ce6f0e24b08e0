"""The ``imaginfo`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ImagInfoExtension import __version__


def _positive_floats_of(what: str, example: str) -> Callable[[str], list[float]]:
    """An argparse type for a comma-separated list of positive numbers."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of numbers (e.g. {example})"
            ) from error
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be positive (e.g. {example})")
        return values

    return parse


_positive_floats = _positive_floats_of("doses (CTDIvol in mGy)", "0.2,1.0,4.0")
_radii = _positive_floats_of("radii in mm", "0.5,1,2,3")


def _names(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one name, e.g. FBP,IR,DL")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


class _ProgressBar:
    """A tqdm bar driven by the core's ``progress(done, total, message)`` callbacks."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=1, desc=description, unit="step", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done: int, total: int, message: str) -> None:
        self._bar.total = total
        self._bar.n = done
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _add_study_arguments(parser: argparse.ArgumentParser, doses: str, repetitions: int, size: str) -> None:
    from ImagInfoExtension.phantom.scanner import PHANTOM_SIZES

    parser.add_argument(
        "--doses",
        type=_positive_floats,
        default=_positive_floats(doses),
        help=f"CTDIvol levels in mGy (default {doses})",
    )
    parser.add_argument(
        "--recons", type=_names, default=["FBP", "IR", "DL"], help="reconstructions (default FBP,IR,DL)"
    )
    parser.add_argument(
        "--repetitions", type=_positive_int, default=repetitions, help=f"scans per dose (default {repetitions})"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--size", choices=sorted(PHANTOM_SIZES), default=size, help=f"phantom grid (default {size})")
    parser.add_argument("--calibration", type=Path, help="calibration CSV (layout of phantom_study_2021.csv)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imaginfo",
        description="ImagInfo: quantitative CT imaging on the digital lung-vessel phantom and your own scans.",
    )
    parser.add_argument("--version", action="version", version=f"imaginfo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phantom = commands.add_parser(
        "phantom",
        help="scan the digital vessel phantom at several doses and reconstructions",
        description="Write truth.json, truth_labels.nrrd, one image per acquisition and manifest.csv.",
    )
    phantom.add_argument("--out", type=Path, required=True, help="output folder")
    _add_study_arguments(phantom, "0.2,0.5,1.0,2.1,4.0", 4, "default")
    phantom.add_argument(
        "--format", choices=["nrrd", "dicom", "both"], default="nrrd", help="image format (default nrrd)"
    )

    demo = commands.add_parser(
        "demo",
        help="run the main job on the built-in phantom",
        description=(
            "The virtual dose study: the phantom scanned at 5 doses x 3 reconstructions x 2 repetitions, the full "
            "comparison (report.html), a montage PNG and a Slicer scene bundle (.mrb). "
            "The published study's design: --repetitions 4 --size default."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("imaginfo_demo"), help="output folder (default imaginfo_demo)")
    _add_study_arguments(demo, "0.2,0.5,1.0,2.1,4.0", 2, "small")
    demo.add_argument("--workers", type=int, help="local worker processes (default one per core; 0: no Dask)")

    vessels = commands.add_parser(
        "vessels",
        help="extract the phantom's vessels and quantify them per radius",
        description=(
            "Vesselness, graph-cut segmentation, centrelines and per-radius statistics of a phantom CT. "
            "Writes per_radius.csv, summary.json, vessels.nrrd and centerlines.json."
        ),
    )
    vessels.add_argument("image", type=Path, help="CT volume: NRRD, NIfTI, MHA or a DICOM series folder")
    vessels.add_argument("--truth", type=Path, help="phantom design: truth.json, or a truth label map")
    vessels.add_argument("--mask", type=Path, help="region to search (non-zero voxels), on the image grid")
    vessels.add_argument(
        "--radii", type=_radii, help="radius classes in mm without a truth (default: the phantom's 9 classes)"
    )
    vessels.add_argument("--out", type=Path, default=Path("vessels"), help="output folder (default ./vessels)")
    vessels.add_argument(
        "--register-truth", action="store_true", help="rigidly align the truth to the image (design in another frame)"
    )
    vessels.add_argument("--vessel-hu", type=float, default=100.0, help="vessel material value (default 100 HU)")

    compare = commands.add_parser(
        "compare",
        help="compare CT doses and reconstructions across repeated scans",
        description=(
            "Vessel quantification and TG-233 image quality of every series, mean ± SD over repetitions, tests "
            "between reconstructions, tables (CSV, XLSX), plots and report.html. Re-running skips finished series."
        ),
    )
    source = compare.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="CSV with columns path,dose_mgy,recon,repetition")
    source.add_argument("dicom_dir", type=Path, nargs="?", help="folder of DICOM series, grouped from their tags")
    compare.add_argument("--out", type=Path, required=True, help="output folder")
    compare.add_argument("--radius", type=float, default=3.0, help="vessel radius tabulated and the d' task (mm)")
    compare.add_argument("--truth", type=Path, help="phantom design truth.json (default: next to the manifest)")
    compare.add_argument("--workers", type=int, help="local worker processes (default one per core; 0: no Dask)")
    compare.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    compare.add_argument("--rules", type=Path, help="reconstruction rules JSON for DICOM grouping")
    compare.add_argument("--test", choices=["welch", "kruskal"], default="welch", help="test between reconstructions")
    compare.add_argument("--reference", default="FBP", help="reference reconstruction for the iso-metric dose")
    compare.add_argument("--reference-dose", type=float, help="its dose (mGy; default the highest)")
    return parser


def _study_request(arguments: argparse.Namespace, file_format: str):
    from ImagInfoExtension.phantom.study import StudyRequest

    return StudyRequest(
        doses_mgy=tuple(arguments.doses),
        recons=tuple(arguments.recons),
        repetitions=arguments.repetitions,
        seed=arguments.seed,
        file_format=file_format,
        size=arguments.size,
        calibration_csv=str(arguments.calibration) if arguments.calibration else None,
    )


def run_phantom(arguments: argparse.Namespace) -> int:
    from ImagInfoExtension.phantom.study import generate_study

    request = _study_request(arguments, arguments.format)
    bar = _ProgressBar("phantom")
    started = time.perf_counter()
    try:
        manifest = generate_study(request, arguments.out, progress=bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    written = "truth.json, truth_labels.nrrd and manifest.csv"
    print(f"wrote {len(manifest)} acquisition(s), {written} to {arguments.out} in {elapsed:.1f} s")
    return 0


def run_vessels(arguments: argparse.Namespace) -> int:
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.vessels import VesselParameters, load_truth, quantify_vessels, write_results

    image = read_image(arguments.image)
    truth = load_truth(arguments.truth, arguments.radii) if arguments.truth else None
    mask = read_image(arguments.mask) if arguments.mask else None
    parameters = VesselParameters(vessel_hu=arguments.vessel_hu, register_truth=arguments.register_truth)
    bar = _ProgressBar("vessels")
    try:
        result = quantify_vessels(
            image, truth=truth, mask=mask, radii_mm=arguments.radii, parameters=parameters, progress=bar
        )
    finally:
        bar.close()
    write_results(result, arguments.out)
    print(
        f"total vessel volume {result.total_volume_ml:.3f} ml in {result.summary['runtime_s']:.1f} s; "
        f"wrote per_radius.csv, summary.json, vessels.nrrd and centerlines.json to {arguments.out}"
    )
    return 0


def load_study(arguments: argparse.Namespace):
    """The study table and truth path of ``imaginfo compare``'s arguments."""
    from ImagInfoExtension.dose.study import DEFAULT_RULES, read_manifest, rules_from_json, study_from_dicom

    truth = arguments.truth
    if arguments.manifest is not None:
        study = read_manifest(arguments.manifest)
        beside = arguments.manifest.parent / "truth.json"
        if truth is None and beside.exists():
            truth = beside
        return study, truth
    rules = rules_from_json(arguments.rules) if arguments.rules else DEFAULT_RULES
    study, unmatched = study_from_dicom(arguments.dicom_dir, rules)
    for row in unmatched.itertuples():
        print(f"left out: {row.path} ({row.series_description!r}): {row.reason}")
    return study, truth


def print_study_summary(result, radius_mm: float) -> None:
    for metric in ("iqr_hu", "total_volume_ml", "noise_sd_hu"):
        title = f"{metric} at r = {radius_mm:g} mm" if metric == "iqr_hu" else metric
        print(f"\n{title} (mean ± SD over repetitions)")
        print(result.tables[metric].to_string())


def run_compare(arguments: argparse.Namespace) -> int:
    from ImagInfoExtension.dose.compare import compare_study
    from ImagInfoExtension.dose.measure import ComparisonParameters

    study, truth = load_study(arguments)
    parameters = ComparisonParameters(
        radius_mm=arguments.radius,
        test=arguments.test,
        reference_recon=arguments.reference,
        reference_dose_mgy=arguments.reference_dose,
    )
    bar = _ProgressBar("compare")
    try:
        result = compare_study(
            study,
            arguments.out,
            parameters,
            truth,
            workers=arguments.workers,
            scheduler=arguments.scheduler,
            progress=bar,
        )
    finally:
        bar.close()
    print_study_summary(result, arguments.radius)
    batch = result.batch
    print(
        f"\n{len(batch.succeeded)} series measured ({len(batch.cached)} from earlier runs), "
        f"{len(batch.failed)} failed; "
        f"{batch.wall_s:.1f} s on {batch.workers or 1} worker(s)"
    )
    for failure in result.failures.itertuples():
        print(f"FAILED {failure.recon} {failure.dose_mgy:g} mGy rep {failure.repetition}: {failure.error}")
    print(f"report: {result.files['report']}")
    return 0 if result.failures.empty else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "phantom":
        runner = run_phantom
    elif arguments.command == "vessels":
        runner = run_vessels
    elif arguments.command == "compare":
        runner = run_compare
    else:
        from ImagInfoExtension.demo import run_demo

        runner = run_demo
    try:
        return runner(arguments)
    except (ValueError, FileNotFoundError, InterruptedError) as error:
        parser.exit(2, f"imaginfo {arguments.command}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"imaginfo {arguments.command}: interrupted; finished files are complete\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
