"""``imaginfo demo``: the main job on the built-in phantom."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.io import read_image
from ImagInfoExtension.phantom.scanner import VirtualScanner
from ImagInfoExtension.progress import ProgressCallback, stage
from ImagInfoExtension.report import save_montage


def _truth_segments(scanner: VirtualScanner) -> list:
    """One segment per radius class, coloured from thin (blue) to thick (red)."""
    from ImagInfoExtension.bridge import SegmentDescription

    return [
        SegmentDescription(label=row["label"], name=row["name"], color=tuple(row["color"]))
        for row in scanner.truth.segment_table()
    ]


def write_demo_scene(scanner: VirtualScanner, volumes: dict[str, sitk.Image], path: Path) -> Path:
    """A Slicer scene bundle with the given volumes and the truth segmentation."""
    from ImagInfoExtension import bridge

    scene = bridge.new_scene()
    first = None
    for name, image in volumes.items():
        node = bridge.volume_node_from_sitk(image, scene, name)
        node.GetDisplayNode().SetAutoWindowLevel(False)
        node.GetDisplayNode().SetWindowLevel(1500, -600)
        first = first or node
    bridge.segmentation_node_from_label_map(
        scanner.truth.label_image(), scene, _truth_segments(scanner), "phantom truth", reference_volume_node=first
    )
    return bridge.save_scene_bundle(scene, path)


def run_demo(arguments: argparse.Namespace, progress: ProgressCallback) -> int:
    from ImagInfoExtension.cli import _study_request
    from ImagInfoExtension.phantom.study import generate_study

    started = time.perf_counter()
    out = Path(arguments.out)
    request = _study_request(arguments, "nrrd")
    scanner = request.scanner()
    study_dir = out / "study"
    # One count over both stages: scanning (acquisitions + truth), then measuring each series.
    scans = len(request.acquisitions())
    total = 2 * scans + 2
    manifest = generate_study(request, study_dir, progress=stage(progress, 0, scans + 1, total), scanner=scanner)

    # Show the axial slice that cuts the most vessel.
    k = int(np.argmax((scanner.truth.labels > 0).sum(axis=(1, 2))))
    slices, volumes = {}, {}
    for row in manifest.itertuples():
        if row.repetition != 1:
            continue
        image = read_image(study_dir / row.path)
        slices[(row.recon, row.dose_mgy)] = sitk.GetArrayViewFromImage(image)[k]
        volumes[Path(row.path).stem] = image
    spacing = scanner.grid.spacing_mm
    montage = save_montage(
        slices,
        request.recons,
        request.doses_mgy,
        out / "montage.png",
        pixel_spacing_mm=(spacing[1], spacing[0]),
        title=f"Digital vessel phantom, axial slice {k} (repetition 1)",
    )
    scene = write_demo_scene(scanner, volumes, out / "phantom_study.mrb")

    from ImagInfoExtension.cli import print_study_summary
    from ImagInfoExtension.dose.compare import EXIT_SOME_SERIES_FAILED, compare_study
    from ImagInfoExtension.dose.measure import ComparisonParameters
    from ImagInfoExtension.dose.study import read_manifest

    parameters = ComparisonParameters()
    progress(scans + 1, total, "montage and scene written")
    result = compare_study(
        read_manifest(study_dir / "manifest.csv"),
        out / "comparison",
        parameters,
        truth=study_dir / "truth.json",
        workers=arguments.workers,
        progress=stage(progress, scans + 1, scans, total),
        virtual=True,
    )
    elapsed = time.perf_counter() - started
    print_study_summary(result, parameters.radius_mm)
    batch = result.batch
    print(f"\nreport:   {result.files['report']}")
    print(f"tables:   {out / 'comparison'} (results_long.csv, iq_metrics.csv, table_*.csv, tables.xlsx, plots)")
    print(f"study:    {study_dir} ({len(manifest)} acquisitions, manifest.csv, truth.json, truth_labels.nrrd)")
    print(f"montage:  {montage}")
    print(f"scene:    {scene} (open in 3D Slicer: File > Add Data)")
    print(
        f"{len(batch.succeeded)} series measured on {batch.workers or 1} worker(s), {len(batch.failed)} failed; "
        f"true vessel volume {scanner.truth.total_volume_ml:.3f} ml; finished in {elapsed:.1f} s"
    )
    for failure in result.failures.itertuples():
        print(f"FAILED {failure.recon} {failure.dose_mgy:g} mGy rep {failure.repetition}: {failure.error}")
    return 0 if result.failures.empty else EXIT_SOME_SERIES_FAILED
