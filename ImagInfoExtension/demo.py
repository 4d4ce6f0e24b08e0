"""``imaginfo demo``: the main job on the built-in phantom."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.dose.compare import EXIT_SOME_SERIES_FAILED, compare_study
from ImagInfoExtension.dose.results import ComparisonParameters, ComparisonResult
from ImagInfoExtension.io import read_image
from ImagInfoExtension.phantom.scanner import VirtualScanner
from ImagInfoExtension.phantom.study import StudyRequest, generate_study
from ImagInfoExtension.progress import ProgressCallback, stage
from ImagInfoExtension.report import save_montage
from ImagInfoExtension.study.table import DOSE_FACTORS, read_manifest


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


@dataclass
class DemoOutputs:
    """What ``imaginfo demo`` wrote."""

    comparison: ComparisonResult
    study_dir: Path
    acquisitions: int
    montage: Path
    scene: Path
    true_volume_ml: float
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        return 0 if self.comparison.failures.empty else EXIT_SOME_SERIES_FAILED

    def describe(self) -> list[str]:
        """Where everything is, for the terminal."""
        batch = self.comparison.batch
        out = self.comparison.files["report"].parent
        return [
            f"tables:   {out} (results_long.csv, iq_metrics.csv, table_*.csv, tables.xlsx, plots)",
            f"study:    {self.study_dir} ({self.acquisitions} acquisitions, manifest.csv, truth.json, "
            "truth_labels.nrrd)",
            f"montage:  {self.montage}",
            f"scene:    {self.scene} (open in 3D Slicer: File > Add Data)",
            f"{len(batch.succeeded)} series measured on {batch.workers or 1} worker(s), {len(batch.failed)} failed; "
            f"true vessel volume {self.true_volume_ml:.3f} ml; finished in {self.elapsed_s:.1f} s",
        ]


def run_demo(
    request: StudyRequest, out: str | Path, workers: int | None = None, progress: ProgressCallback | None = None
) -> DemoOutputs:
    """The virtual dose study: scan the phantom as ``request`` says, then compare the scans.

    Writes ``out/study`` (the acquisitions and the truth), ``out/montage.png``,
    ``out/phantom_study.mrb`` and ``out/comparison`` (the report and its tables).
    """
    started = time.perf_counter()
    out = Path(out)
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
    if progress is not None:
        progress(scans + 1, total, "montage and scene written")
    result = compare_study(
        read_manifest(study_dir / "manifest.csv", DOSE_FACTORS),
        out / "comparison",
        ComparisonParameters(),
        truth=study_dir / "truth.json",
        workers=workers,
        progress=stage(progress, scans + 1, scans, total),
        virtual=True,
    )
    return DemoOutputs(
        comparison=result,
        study_dir=study_dir,
        acquisitions=len(manifest),
        montage=montage,
        scene=scene,
        true_volume_ml=scanner.truth.total_volume_ml,
        elapsed_s=time.perf_counter() - started,
    )
