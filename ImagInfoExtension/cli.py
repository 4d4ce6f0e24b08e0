"""The ``imaginfo`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ImagInfoExtension import __version__
from ImagInfoExtension.progress import PARENT_PIPE_VARIABLE, PROGRESS_MODES, ProgressCallback, progress_reporter


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


def _perturbation(text: str) -> tuple[str, list[float]]:
    name, _, levels = text.partition("=")
    try:
        values = [float(part) for part in levels.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: levels must be numbers, e.g. noise_sd_hu=0,10,20,40") from error
    if not name.strip() or not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not FACTOR=LEVELS, e.g. blur_fwhm_mm=0,0.5,1,2")
    return name.strip(), values


def _add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="bar",
        help="bar: a progress bar (default); json: one {done,total,message} object per line on stderr; none",
    )


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
    _add_progress_argument(phantom)

    sample = commands.add_parser(
        "sample",
        help="write the sample data set (one phantom CT and its truth)",
        description=(
            "The 'ImagInfo vessel phantom' sample data: the small phantom scanned with FBP at 1 mGy, "
            "truth_labels.nrrd and truth.json. Files already there are kept."
        ),
    )
    sample.add_argument("--out", type=Path, required=True, help="output folder")
    _add_progress_argument(sample)

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
    _add_progress_argument(demo)

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
    vessels.add_argument(
        "--wall-margin", type=float, default=2.0, help="distance kept from the holder wall (mm, default 2)"
    )
    vessels.add_argument(
        "--core-depth", type=float, default=1.0, help="depth of the voxels MPV and IQR use (mm, default 1)"
    )
    vessels.add_argument(
        "--scales",
        type=_positive_floats_of("vesselness scales in mm", "0.3,0.6,1.2"),
        help="vesselness scales in mm (default: from the radius classes)",
    )
    vessels.add_argument(
        "--sensitivity",
        type=float,
        default=0.25,
        help="vesselness at which a thin, blurred tube is cut at its local half-maximum (0.05-1, default 0.25)",
    )
    _add_progress_argument(vessels)

    compare = commands.add_parser(
        "compare",
        help="compare CT doses and reconstructions across repeated scans",
        description=(
            "Vessel quantification and TG-233 image quality of every series, mean ± SD over repetitions, tests "
            "between reconstructions, tables (CSV, XLSX), plots and report.html. Re-running skips finished series."
        ),
    )
    source = compare.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifest",
        type=Path,
        help="study CSV: path, dose_mgy, recon, and optionally repetition, series_uid and further factor columns",
    )
    source.add_argument("dicom_dir", type=Path, nargs="?", help="folder of DICOM series, grouped from their tags")
    compare.add_argument("--out", type=Path, required=True, help="output folder")
    compare.add_argument("--radius", type=float, help="vessel radius tabulated and the d' task (mm, default 3)")
    compare.add_argument("--truth", type=Path, help="phantom design truth.json (default: next to the manifest)")
    compare.add_argument(
        "--noise-roi",
        type=Path,
        help="label map or mask (any non-zero voxel) of a uniform region for noise SD and NPS, on any grid that "
        "overlaps the series (default: found automatically)",
    )
    compare.add_argument("--workers", type=int, help="local worker processes (default one per core; 0: no Dask)")
    compare.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    compare.add_argument("--rules", type=Path, help="reconstruction rules JSON for DICOM grouping")
    compare.add_argument("--test", choices=["welch", "kruskal"], help="test between reconstructions (default welch)")
    compare.add_argument("--reference", help="reference reconstruction for the iso-metric dose (default FBP)")
    compare.add_argument("--reference-dose", type=float, help="its dose (mGy; default the highest)")
    compare.add_argument(
        "--radiomics",
        metavar="PRESET",
        help="add radiomics features (IBSI engine, this preset, e.g. ct) and the report's feature-robustness section",
    )
    compare.add_argument(
        "--radiomics-segments",
        type=_names,
        help="segments for --radiomics: classes (the truth's radius classes), pmma (the holder wall); default both",
    )
    compare.add_argument(
        "--segmentation",
        metavar="MODEL",
        help="add a catalogue model's segmentation scored against the truth (Dice, HD95, volume per class) next to "
        "the graph cut's, e.g. imaginfo-phantom-vessels",
    )
    compare.add_argument(
        "--parameters",
        type=Path,
        help="JSON object of comparison settings (ComparisonParameters fields); the flags above override it",
    )
    _add_progress_argument(compare)

    study = commands.add_parser(
        "study",
        help="group a folder of DICOM series into a study table",
        description=(
            "Reads the headers of every CT series under DICOM_DIR and groups them by CTDIvol and reconstruction "
            "rules, as `imaginfo compare DICOM_DIR` does. Writes the study (path,dose_mgy,recon,repetition,"
            "series_uid plus the DICOM attributes used) to --out, and the series left out, with the reason, "
            "beside it (<name>_left_out.csv). Edit the study and pass it to `imaginfo compare --manifest`."
        ),
    )
    study.add_argument("dicom_dir", type=Path, help="folder of DICOM series")
    study.add_argument("--out", type=Path, required=True, help="study CSV to write")
    study.add_argument("--rules", type=Path, help="reconstruction rules JSON")
    _add_progress_argument(study)

    radiomics = commands.add_parser(
        "radiomics",
        help="radiomics features per segment or lesion (IBSI-1 engine or pyradiomics)",
        description=(
            "Features of every segment of a label map (each non-zero label), or of each lesion (--per-lesion), "
            "written as a tidy features.csv (case,segment,lesion,image_type,feature_class,feature,value,ibsi_tag) "
            "plus features_wide.csv, lesions.csv, failures.csv and features.provenance.json. With --manifest "
            "(case,image,mask plus optional label, segment and factor columns) the rows run on the batch engine, "
            "resumable. --ibsi-check runs the six IBSI-1 cases and writes DIR/ibsi_compliance.csv."
        ),
    )
    radiomics.add_argument("image", type=Path, nargs="?", help="image: NRRD, NIfTI, MHA or a DICOM series folder")
    radiomics.add_argument("mask", type=Path, nargs="?", help="label map on any grid that overlaps the image")
    radiomics_source = radiomics.add_mutually_exclusive_group()
    radiomics_source.add_argument("--manifest", type=Path, help="CSV with case,image,mask (+ label, segment, factors)")
    radiomics_source.add_argument(
        "--ibsi-check", action="store_true", help="run the IBSI-1 phantom and configurations A-E; --out is a folder"
    )
    radiomics.add_argument("--ibsi-data", type=Path, help="IBSI-1 data folder (default ../shared/reference/ibsi)")
    radiomics_settings = radiomics.add_mutually_exclusive_group()
    radiomics_settings.add_argument("--preset", help="ibsi-phantom, ibsi-A ... ibsi-E, ct, mr, pet-suv (default ct)")
    radiomics_settings.add_argument("--params", type=Path, help="parameter file: ImagInfo or pyradiomics YAML/JSON")
    radiomics.add_argument(
        "--mode",
        choices=["ibsi", "pyradiomics"],
        help="engine (default: ibsi for presets and ImagInfo files, pyradiomics for pyradiomics files)",
    )
    radiomics.add_argument("--per-lesion", action="store_true", help="one row group per connected component")
    radiomics.add_argument(
        "--min-lesion-volume-ml", type=float, default=0.0, help="smallest lesion kept in --per-lesion (ml, default 0)"
    )
    radiomics.add_argument("--case", help="case name in the table (default: the image's file name)")
    radiomics.add_argument("--segment-names", help="names of the labels, e.g. 1=tumour,2=node (default label_<n>)")
    radiomics.add_argument(
        "--out", type=Path, help="features CSV (default features.csv); with --ibsi-check an output folder"
    )
    radiomics.add_argument("--workers", type=int, help="local worker processes for --manifest (0: no Dask)")
    radiomics.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    _add_progress_argument(radiomics)

    robustness = commands.add_parser(
        "radiomics-robustness",
        help="feature reproducibility: ICC(2,1), ICC(3,1) and Lin's CCC against a reference condition",
        description=(
            "Reads a features.csv with factor columns (from `imaginfo radiomics --manifest`) and writes, per "
            "feature, ICC(2,1) and ICC(3,1) with 95%% confidence intervals across the conditions, Lin's CCC of each "
            "condition against the reference, and whether the feature is robust (CCC >= threshold in every one)."
        ),
    )
    robustness.add_argument("features", type=Path, help="tidy features.csv with factor columns")
    robustness.add_argument("--group-by", type=_names, required=True, help="factor columns, e.g. recon,dose_mgy")
    robustness.add_argument(
        "--reference", required=True, help="reference condition, e.g. recon=FBP,dose_mgy=4.0 (one value per column)"
    )
    robustness.add_argument(
        "--ccc-threshold", type=float, default=0.90, help="CCC at or above which a feature is robust (default 0.90)"
    )
    robustness.add_argument("--out", type=Path, help="output CSV (default robustness.csv beside the features)")
    _add_progress_argument(robustness)

    perturbation = commands.add_parser(
        "robustness",
        help="how a segmentation model's accuracy falls as image quality falls (noise, blur, dose)",
        description=(
            "Degrades IMAGE step by step (correlated noise of a chosen NPS at a given SD, Gaussian blur of a given "
            "FWHM, or a lower dose by noise insertion), segments every level with the model and scores it against "
            "the truth through the study runner. Writes study.csv, results_long.csv "
            "(<factors>,radius_mm,metric,value), robustness_summary.csv, robustness.png/.svg, "
            "robustness_section.html, robustness_report.html and provenance.json."
        ),
    )
    perturbation.add_argument("image", type=Path, help="the unperturbed image")
    perturbation.add_argument("--model", required=True, help="catalogue model id, or id@version")
    perturbation.add_argument("--truth", type=Path, required=True, help="reference label map, labelled as the model")
    perturbation.add_argument(
        "--perturb",
        type=_perturbation,
        action="append",
        required=True,
        metavar="FACTOR=LEVELS",
        help="noise_sd_hu=0,10,20,40 | blur_fwhm_mm=0,0.5,1,2 | dose_mgy=4,2,1 (repeat for several factors)",
    )
    perturbation.add_argument(
        "--nps", default="phantom", help="noise texture: phantom (its FBP NPS), white, or a CSV frequency_per_mm,nps"
    )
    perturbation.add_argument(
        "--design",
        choices=["one_at_a_time", "grid"],
        default="one_at_a_time",
        help="vary each factor alone from the unperturbed image (default), or every combination",
    )
    perturbation.add_argument("--repetitions", type=_positive_int, default=1, help="noise realisations (default 1)")
    perturbation.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    perturbation.add_argument("--reference-dose-mgy", type=float, help="the image's CTDIvol, for dose_mgy levels")
    perturbation.add_argument("--reference-noise-sd-hu", type=float, help="the image's noise SD, for dose_mgy levels")
    perturbation.add_argument("--graph-cut", action="store_true", help="also score the vessel graph cut (slow)")
    perturbation.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    perturbation.add_argument("--out", type=Path, required=True, help="output folder")
    perturbation.add_argument("--workers", type=int, help="local worker processes (0: no Dask)")
    perturbation.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    _add_progress_argument(perturbation)

    segment = commands.add_parser(
        "segment",
        help="segment an image (or a manifest of images) with a catalogue model, on CPU or GPU",
        description=(
            "Runs a model of the catalogue (`imaginfo models list`) with MONAI's sliding-window inference and writes "
            "DIR/segmentation.nrrd (a label map on the input's grid, labelled as in the catalogue), "
            "DIR/biomarkers.csv, DIR/evaluation.csv (with --truth: label,name,dice,hd95_mm,assd_mm,nsd,volume_ml,"
            "true_volume_ml) and DIR/summary.json (runtime_s, device, the model's id, version and sha256). "
            "With --manifest (path plus optional case, truth, modality and factor columns) every row runs on the "
            "batch engine, one model load per worker, resumable."
        ),
    )
    segment.add_argument("image", type=Path, nargs="?", help="image: NRRD, NIfTI, MHA or a DICOM series folder")
    segment.add_argument("--manifest", type=Path, help="CSV with path (+ case, truth, modality, factor columns)")
    segment.add_argument("--model", required=True, help="catalogue model id, or id@version")
    segment.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)"
    )
    segment.add_argument("--truth", type=Path, help="reference label map (labelled as the model) for evaluation.csv")
    segment.add_argument("--modality", help="the input's modality (CT, PT, MR), checked against the model's")
    segment.add_argument(
        "--nsd-tolerance-mm", type=float, default=1.0, help="normalised surface Dice tolerance (mm, default 1)"
    )
    segment.add_argument("--out", type=Path, required=True, help="output folder")
    segment.add_argument("--workers", type=int, help="local worker processes for --manifest (0: no Dask)")
    segment.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    _add_progress_argument(segment)

    evaluate = commands.add_parser(
        "evaluate",
        help="Dice, HD95, ASSD and normalised surface Dice of two label maps",
        description=(
            "Per label of PREDICTION and TRUTH: label,name,dice,hd95_mm,assd_mm,nsd,volume_ml,true_volume_ml. A "
            "truth on another grid is resampled by nearest neighbour (with a warning); one that does not overlap "
            "is refused."
        ),
    )
    evaluate.add_argument("prediction", type=Path, help="predicted label map")
    evaluate.add_argument("truth", type=Path, help="reference label map")
    evaluate.add_argument(
        "--spacing-aware",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="distances in mm from the voxel spacing (default); --no-spacing-aware measures them in voxels",
    )
    evaluate.add_argument(
        "--nsd-tolerance-mm", type=float, default=1.0, help="normalised surface Dice tolerance (mm, default 1)"
    )
    evaluate.add_argument("--out", type=Path, default=Path("evaluation.csv"), help="output CSV (evaluation.csv)")
    _add_progress_argument(evaluate)

    models = commands.add_parser(
        "models",
        help="the model catalogue: list, import, fetch and verify weights",
        description=(
            "Weights are checked against their SHA-256 before they are ever loaded; only plain weight files "
            "(torch.load(weights_only=True), safetensors) and verified TorchScript are loaded. The cache folder is "
            "per user; IMAGINFO_MODEL_CACHE overrides it."
        ),
    )
    model_actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    model_actions.add_parser("list", help="every model with its licence, size and whether its weights are present")
    model_import = model_actions.add_parser(
        "import", help="import a MONAI bundle (folder or .zip) as a catalogue entry; unsafe files are refused"
    )
    model_import.add_argument("path", type=Path, help="bundle folder or .zip (configs/, models/model.pt|.ts)")
    model_import.add_argument("--id", dest="model_id", required=True, help="catalogue id for the model")
    model_import.add_argument("--version", help="version (default: the bundle's metadata.json)")
    model_fetch = model_actions.add_parser("fetch", help="download a model's weights into the cache, checked")
    model_fetch.add_argument("model", help="model id, or id@version")
    model_fetch.add_argument("--url", help="download from this URL instead of the catalogue's")
    model_fetch.add_argument("--file", type=Path, help="side-load a local weights file instead (offline)")
    model_verify = model_actions.add_parser("verify", help="check a model's weights against size and SHA-256")
    model_verify.add_argument("model", help="model id, or id@version")
    for parser_ in model_actions.choices.values():
        _add_progress_argument(parser_)
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


def run_phantom(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.phantom.study import generate_study

    request = _study_request(arguments, arguments.format)
    started = time.perf_counter()
    manifest = generate_study(request, arguments.out, progress=progress)
    elapsed = time.perf_counter() - started
    written = "truth.json, truth_labels.nrrd and manifest.csv"
    print(f"wrote {len(manifest)} acquisition(s), {written} to {arguments.out} in {elapsed:.1f} s")
    return 0


def run_sample(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.phantom.study import write_sample_data

    progress(0, 1, "scanning the phantom")
    paths = write_sample_data(arguments.out)
    progress(1, 1, "sample data written")
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def _vessel_parameters(arguments: argparse.Namespace):
    from ImagInfoExtension.vessels import VesselParameters

    if not 0.05 <= arguments.sensitivity <= 1.0:
        raise ValueError(f"--sensitivity {arguments.sensitivity:g} is outside 0.05-1; 0.25 suits most scans")
    for flag, value in (("--wall-margin", arguments.wall_margin), ("--core-depth", arguments.core_depth)):
        if value < 0:
            raise ValueError(f"{flag} {value:g} must be zero or more millimetres")
    return VesselParameters(
        vessel_hu=arguments.vessel_hu,
        register_truth=arguments.register_truth,
        wall_margin_mm=arguments.wall_margin,
        core_depth_mm=arguments.core_depth,
        scales_mm=tuple(arguments.scales) if arguments.scales else None,
        graph_cut={"vesselness_reference": arguments.sensitivity},
    )


def run_vessels(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.vessels import load_truth, quantify_vessels, write_results

    parameters = _vessel_parameters(arguments)
    image = read_image(arguments.image)
    truth = load_truth(arguments.truth, arguments.radii) if arguments.truth else None
    mask = read_image(arguments.mask) if arguments.mask else None
    result = quantify_vessels(
        image, truth=truth, mask=mask, radii_mm=arguments.radii, parameters=parameters, progress=progress
    )
    write_results(result, arguments.out)
    print(
        f"total vessel volume {result.total_volume_ml:.3f} ml in {result.summary['runtime_s']:.1f} s; "
        f"wrote per_radius.csv, summary.json, vessels.nrrd and centerlines.json to {arguments.out}"
    )
    return 0


def load_study(arguments: argparse.Namespace):
    """The study table and truth path of ``imaginfo compare``'s arguments."""
    from ImagInfoExtension.study.dicom import DEFAULT_RULES, rules_from_json, study_from_dicom
    from ImagInfoExtension.study.table import DOSE_FACTORS, read_manifest

    truth = arguments.truth
    if arguments.manifest is not None:
        study = read_manifest(arguments.manifest, DOSE_FACTORS)
        beside = arguments.manifest.parent / "truth.json"
        if truth is None and beside.exists():
            truth = beside
        return study, truth
    rules = rules_from_json(arguments.rules) if arguments.rules else DEFAULT_RULES
    study, unmatched = study_from_dicom(arguments.dicom_dir, rules)
    for row in unmatched.itertuples():
        print(f"left out: {row.path} ({row.series_description!r}): {row.reason}")
    return study, truth


def run_study(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.io import write_atomically
    from ImagInfoExtension.study.dicom import DEFAULT_RULES, rules_from_json, study_from_dicom
    from ImagInfoExtension.study.table import left_out_path

    rules = rules_from_json(arguments.rules) if arguments.rules else DEFAULT_RULES
    study, unmatched = study_from_dicom(arguments.dicom_dir, rules, progress=progress)
    out = arguments.out
    left_out = left_out_path(out)
    write_atomically(out, lambda p: study.to_csv(p, index=False))
    write_atomically(left_out, lambda p: unmatched.to_csv(p, index=False))
    print(f"{len(study)} series grouped into {out}; {len(unmatched)} left out ({left_out})")
    return 0


def comparison_settings_file(path: Path) -> dict:
    """The settings of ``--parameters``: a JSON object of ComparisonParameters fields, checked by name."""
    import json
    from dataclasses import fields

    from ImagInfoExtension.dose.results import ComparisonParameters

    try:
        settings = json.loads(Path(path).read_text())
    except OSError as error:
        raise FileNotFoundError(f"--parameters {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--parameters {path} is not JSON ({error})") from None
    known = {f.name for f in fields(ComparisonParameters)}
    if not isinstance(settings, dict) or set(settings) - known:
        unknown = sorted(set(settings) - known) if isinstance(settings, dict) else settings
        raise ValueError(f"--parameters {path}: unknown setting(s) {unknown}; known: {', '.join(sorted(known))}")
    return settings


def print_comparison(result) -> None:
    """The terminal summary of a comparison: its findings, three tables, and what failed or was left out."""
    from ImagInfoExtension.metrics import metric
    from ImagInfoExtension.study.table import series_label

    radius = result.parameters.radius_mm
    if result.findings:
        print("\nKey findings")
        for sentence in result.findings:
            print(f"- {sentence}")
    for key in ("iqr_hu", "total_volume_ml", "noise_sd_hu"):
        entry = metric(key)
        where = f" at r = {radius:g} mm" if entry.per_class else ""
        print(f"\n{entry.label}{where} (mean ± SD over repetitions)")
        print(result.tables[key].to_string())
    batch = result.batch
    print(
        f"\n{len(batch.succeeded)} series measured ({len(batch.cached)} from earlier runs), "
        f"{len(batch.failed)} failed; {batch.wall_s:.1f} s on {batch.workers or 1} worker(s)"
    )
    for failure in result.failures.to_dict("records"):
        print(f"FAILED {series_label(failure, result.factors)}: {failure['error']}")
    if not result.warnings.empty:
        counts = result.warnings.groupby(["metric", "reason"], sort=False).size()
        for (key, reason), count in counts.items():
            print(f"NOT MEASURED {key} on {count} series: {reason}")
        print(f"(listed in {result.files.get('warnings', 'warnings.csv')})")
    print(f"report: {result.files['report']}")


def run_compare(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.dose.compare import EXIT_SOME_SERIES_FAILED, compare_study
    from ImagInfoExtension.dose.results import ComparisonParameters

    study, truth = load_study(arguments)
    settings = comparison_settings_file(arguments.parameters) if arguments.parameters else {}
    flags = {
        "radius_mm": arguments.radius,
        "test": arguments.test,
        "reference_recon": arguments.reference,
        "reference_dose_mgy": arguments.reference_dose,
    }
    if arguments.radiomics or arguments.radiomics_segments:
        radiomics = dict(settings.get("radiomics") or {})
        if arguments.radiomics:
            radiomics["preset"] = arguments.radiomics
        if arguments.radiomics_segments:
            radiomics["segments"] = arguments.radiomics_segments
        flags["radiomics"] = radiomics
    if arguments.segmentation:
        flags["segmentation"] = {**(settings.get("segmentation") or {}), "model": arguments.segmentation}
    parameters = ComparisonParameters(**{**settings, **{k: v for k, v in flags.items() if v is not None}})
    if arguments.noise_roi is not None and not arguments.noise_roi.exists():
        raise FileNotFoundError(f"--noise-roi {arguments.noise_roi} does not exist; give a label map or mask file")
    result = compare_study(
        study,
        arguments.out,
        parameters,
        truth,
        workers=arguments.workers,
        scheduler=arguments.scheduler,
        progress=progress,
        noise_roi=arguments.noise_roi,
    )
    print_comparison(result)
    return 0 if result.failures.empty else EXIT_SOME_SERIES_FAILED


def run_demo(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.demo import run_demo as demo

    outputs = demo(_study_request(arguments, "nrrd"), arguments.out, arguments.workers, progress)
    print_comparison(outputs.comparison)
    for line in outputs.describe():
        print(line)
    return outputs.exit_code


#: Exit code when some ROIs or cases gave no features (the others were written).
EXIT_SOME_ROIS_FAILED = 3


def _segment_names(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    names: dict[int, str] = {}
    for part in text.split(","):
        label, _, name = part.partition("=")
        if not label.strip().isdigit() or not name.strip():
            raise ValueError(f"--segment-names {text!r}: write label=name pairs, e.g. 1=tumour,2=node")
        names[int(label)] = name.strip()
    return names


def _radiomics_settings(arguments: argparse.Namespace):
    from ImagInfoExtension.radiomics.settings import settings_from

    settings = settings_from(arguments.preset, arguments.params, arguments.mode)
    if settings.mode == "pyradiomics":
        from ImagInfoExtension.radiomics.pyradiomics_mode import pyradiomics_available

        available, message = pyradiomics_available()
        if not available:
            raise ValueError(message)
    return settings


def run_radiomics(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.radiomics.run import extract_file, run_ibsi_check, run_manifest

    if arguments.ibsi_check:
        if arguments.out is None:
            raise ValueError("--ibsi-check needs --out DIR, the folder for ibsi_compliance.csv")
        compliance, summary = run_ibsi_check(arguments.out, arguments.ibsi_data, progress=progress)
        for row in summary.itertuples():
            print(f"IBSI-1 {row.config:>7} {row.kind:<11} {row.passed}/{row.total}")
        print(f"wrote {arguments.out / 'ibsi_compliance.csv'}")
        return 0 if bool(compliance["pass"].all()) else 1
    settings = _radiomics_settings(arguments)
    out = arguments.out or Path("features.csv")
    if arguments.manifest is not None:
        if arguments.image or arguments.mask:
            raise ValueError("give IMAGE MASK or --manifest, not both")
        paths, summary = run_manifest(
            arguments.manifest,
            settings,
            out,
            per_lesion=arguments.per_lesion,
            min_lesion_volume_ml=arguments.min_lesion_volume_ml,
            workers=arguments.workers,
            scheduler=arguments.scheduler,
            progress=progress,
        )
        for outcome in summary.failed:
            print(f"failed: {outcome.name}: {outcome.error}")
        print(f"{len(summary.succeeded)} of {len(summary.outcomes)} case(s) extracted; wrote {paths['features']}")
        return 0 if not summary.failed and "failures" not in paths else EXIT_SOME_ROIS_FAILED
    if arguments.image is None or arguments.mask is None:
        raise ValueError("give IMAGE and MASK, --manifest CSV, or --ibsi-check")
    result, paths = extract_file(
        arguments.image,
        arguments.mask,
        settings,
        out,
        case=arguments.case,
        segment_names=_segment_names(arguments.segment_names),
        per_lesion=arguments.per_lesion,
        min_lesion_volume_ml=arguments.min_lesion_volume_ml,
        progress=progress,
    )
    for warning in result.warnings:
        print(f"warning: {warning}")
    for failure in result.failures:
        print(f"failed: {failure['error']}")
    rois = len({(r["segment"], r["lesion"]) for r in result.rows})
    print(
        f"{len(result.rows)} values of {rois} ROI(s) ({settings.mode} mode, {settings.name}); wrote {paths['features']}"
    )
    return 0 if not result.failures else EXIT_SOME_ROIS_FAILED


def run_radiomics_robustness(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.io import write_atomically
    from ImagInfoExtension.radiomics.robustness import feature_robustness, parse_reference, read_features_csv

    features = read_features_csv(arguments.features)
    reference = parse_reference(arguments.reference)
    table = feature_robustness(features, arguments.group_by, reference, ccc_threshold=arguments.ccc_threshold)
    out = arguments.out or arguments.features.parent / "robustness.csv"
    write_atomically(out, lambda p: table.to_csv(p, index=False))
    robust = int(table["robust"].fillna(False).astype(bool).sum())
    print(
        f"{robust} of {len(table)} features robust (CCC >= {arguments.ccc_threshold} in every condition); wrote {out}"
    )
    return 0


def run_segment(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.segmentation.run import run_segment_manifest, segment_file

    if arguments.manifest is not None:
        if arguments.image is not None or arguments.truth is not None:
            raise ValueError("give IMAGE [--truth LABELS] or --manifest CSV (with a truth column), not both")
        paths, summary = run_segment_manifest(
            arguments.manifest,
            arguments.model,
            arguments.out,
            device=arguments.device,
            nsd_tolerance_mm=arguments.nsd_tolerance_mm,
            workers=arguments.workers,
            scheduler=arguments.scheduler,
            progress=progress,
        )
        for outcome in summary.failed:
            print(f"failed: {outcome.name}: {outcome.error}")
        print(f"{len(summary.succeeded)} of {len(summary.outcomes)} image(s) segmented; wrote {paths['cases']}")
        return 0 if not summary.failed else EXIT_SOME_ROIS_FAILED
    if arguments.image is None:
        raise ValueError("give IMAGE or --manifest CSV")
    summary = segment_file(
        arguments.image,
        arguments.model,
        arguments.out,
        device=arguments.device,
        truth_path=arguments.truth,
        modality=arguments.modality,
        nsd_tolerance_mm=arguments.nsd_tolerance_mm,
        progress=progress,
    )
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    model = summary["model"]
    print(
        f"{model['id']} {model['version']} on {summary['device']} in {summary['runtime_s']:.1f} s; "
        f"wrote {', '.join(summary['outputs'])} and summary.json to {arguments.out}"
    )
    for row in summary.get("evaluation", []):
        print(f"  {row['name']}: Dice {float(row['dice']):.3f}, HD95 {float(row['hd95_mm']):.2f} mm")
    return 0


def run_robustness(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.segmentation.robustness import run_robustness as robustness

    names = [name for name, _ in arguments.perturb]
    if len(set(names)) != len(names):
        raise ValueError(f"--perturb names a factor twice ({', '.join(names)}); give each factor once")
    result = robustness(
        read_image(arguments.image),
        read_image(arguments.truth),
        arguments.model,
        dict(arguments.perturb),
        arguments.out,
        nps=arguments.nps,
        repetitions=arguments.repetitions,
        seed=arguments.seed,
        design=arguments.design,
        device=arguments.device,
        reference_dose_mgy=arguments.reference_dose_mgy,
        reference_noise_sd_hu=arguments.reference_noise_sd_hu,
        graph_cut=arguments.graph_cut,
        workers=arguments.workers,
        scheduler=arguments.scheduler,
        progress=progress,
    )
    for note in result.notes:
        print(f"warning: {note}")
    for failure in result.failures.itertuples():
        print(f"failed: {failure.error}")
    print(f"{len(result.design)} level(s) segmented and scored; report: {result.files['report']}")
    return 0 if result.failures.empty else EXIT_SOME_ROIS_FAILED


def run_evaluate(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.segmentation.evaluation import align_truth, evaluate_label_maps, write_evaluation_csv

    prediction = read_image(arguments.prediction)
    truth, warnings = align_truth(read_image(arguments.truth), prediction)
    for warning in warnings:
        print(f"warning: {warning}")
    rows = evaluate_label_maps(
        prediction, truth, spacing_aware=arguments.spacing_aware, nsd_tolerance_mm=arguments.nsd_tolerance_mm
    )
    write_evaluation_csv(rows, arguments.out)
    print(f"{len(rows)} label(s) evaluated; wrote {arguments.out}")
    return 0


def run_models(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    """``imaginfo models``: refused files and failed checks exit with 1 and say why."""
    from ImagInfoExtension.segmentation.catalogue import CatalogueError
    from ImagInfoExtension.segmentation.weights import WeightsError

    try:
        return _model_action(arguments, progress)
    except (CatalogueError, WeightsError) as error:
        print(f"imaginfo models: {error}", file=sys.stderr)
        return 1


def _model_action(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.segmentation import weights
    from ImagInfoExtension.segmentation.bundle import import_model
    from ImagInfoExtension.segmentation.catalogue import load_catalogue
    from ImagInfoExtension.segmentation.run import resolve_model

    if arguments.action == "list":
        entries = load_catalogue().entries
        for entry in entries:
            status = weights.verify_weights(entry)
            state = "verified" if status.ok else ("present, NOT verified" if status.present else "not downloaded")
            cpu_s = entry.requirements.time_s.get("cpu")
            print(
                f"{entry.key:<36} {entry.modality:<3} {entry.license:<12} {entry.weights.size_bytes / 1e6:6.1f} MB  "
                f"{state:<22} {f'~{cpu_s:.0f} s on CPU' if cpu_s else ''}  {entry.title}"
            )
        print(f"{len(entries)} model(s); weights cache: {weights.cache_directory()}")
        return 0
    if arguments.action == "import":
        entry = import_model(arguments.path, arguments.model_id, arguments.version)
        print(f"imported {entry.key} ({entry.weights.size_bytes / 1e6:.1f} MB, sha256 {entry.weights.sha256})")
        return 0
    entry = resolve_model(arguments.model)
    if arguments.action == "fetch":
        if arguments.file is not None:
            path = weights.side_load_weights(entry, arguments.file)
        else:
            path = weights.fetch_weights(entry, progress=progress, url=arguments.url)
        print(f"{entry.key}: weights verified at {path}")
        return 0
    status = weights.verify_weights(entry)
    print(f"{entry.key}: {status}")
    return 0 if status.ok else 1


def _runner(command: str) -> Callable[[argparse.Namespace, ProgressCallback], int]:
    return {
        "demo": run_demo,
        "phantom": run_phantom,
        "sample": run_sample,
        "vessels": run_vessels,
        "compare": run_compare,
        "study": run_study,
        "radiomics": run_radiomics,
        "radiomics-robustness": run_radiomics_robustness,
        "segment": run_segment,
        "robustness": run_robustness,
        "evaluate": run_evaluate,
        "models": run_models,
    }[command]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (argument and input errors exit with 2)."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    runner = _runner(arguments.command)
    reporter = progress_reporter(arguments.progress, arguments.command)
    code = 1
    try:
        code = runner(arguments, reporter)
    except (ValueError, FileNotFoundError) as error:
        reporter.close(succeeded=False)
        parser.exit(2, f"imaginfo {arguments.command}: error: {error}\n")
    except KeyboardInterrupt as interrupt:
        # Cancelled, Ctrl-C and SIGTERM alike (one convention: ImagInfoExtension.progress.Cancelled).
        reporter.close(succeeded=False)
        detail = str(interrupt) or "interrupted; finished files are complete"
        parser.exit(130, f"imaginfo {arguments.command}: {detail}\n")
    reporter.close(succeeded=code == 0)
    return code


def _terminate(signal_number: int, frame: object) -> None:
    # SIGTERM (a GUI's Cancel) unwinds like Ctrl-C, so temporary files are removed
    # and worker processes are shut down on the way out.
    raise KeyboardInterrupt


def _exit_with_parent() -> None:
    """End like Ctrl-C once stdin reaches end of file: the GUI that holds its other end has gone.

    Only when the runner asks for it (:data:`PARENT_PIPE_VARIABLE`): a command started
    from a shell or a scheduler may well have an empty stdin.
    """
    import _thread
    import threading

    descriptor = sys.stdin.fileno()

    def watch() -> None:
        # os.read on the descriptor, not sys.stdin's buffered reader: a daemon thread
        # holding that reader's lock aborts the interpreter's shutdown.
        try:
            while os.read(descriptor, 65536):
                pass
        except OSError:
            pass
        _thread.interrupt_main()

    threading.Thread(target=watch, name="imaginfo-parent-watch", daemon=True).start()


def run() -> None:
    """The ``imaginfo`` console script (and ``python -m ImagInfoExtension``)."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)
    if os.environ.get(PARENT_PIPE_VARIABLE) == "1" and sys.stdin is not None:
        _exit_with_parent()
    sys.exit(main())


if __name__ == "__main__":
    run()
