"""Dice per radius class: the shipped phantom model beside the graph cut, on the same unseen acquisitions.

The virtual scanner renders the phantom on an oblique grid of the whole field of view
(holder included) whose rotation no training grid has, and acquires it with a noise
seed no training run uses at 0.2, 0.5, 1, 2.1, 3 (between the training doses) and
4 mGy with FBP, IR and DL. Each acquisition is segmented twice:

- the model ``imaginfo-phantom-vessels`` through the catalogue's bundle import, the
  verified weights loader and the inference engine
  (:func:`ImagInfoExtension.segmentation.inference.segment_image`);
- the rule-based vessel pipeline (:func:`ImagInfoExtension.vessels.quantify_vessels`:
  region, vesselness, minimum cut, centrelines and radii), whose label map classes each
  vessel voxel by the radius of its nearest centreline point, given the phantom's
  design for its radius classes.

Both label maps are scored against the scanner's truth with the same function,
:func:`ImagInfoExtension.truth.dice_per_class`. 0.2 mGy lies below the training doses.

Prints one JSON document: every acquisition's Dice per class and run time for both
methods, the mean Dice per class over the reconstructions at each dose for both, and
their ratio (model / graph cut).

Usage: ``python benchmarks/bench_segmentation_dice.py [--doses 3,4] [--recons FBP]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ImagInfoExtension.phantom.acquisition import AcquisitionSettings  # noqa: E402
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM  # noqa: E402
from ImagInfoExtension.phantom.scanner import VirtualScanner  # noqa: E402
from ImagInfoExtension.provenance import software_versions  # noqa: E402
from ImagInfoExtension.segmentation import training  # noqa: E402
from ImagInfoExtension.segmentation.bundle import entry_from_bundle  # noqa: E402
from ImagInfoExtension.segmentation.catalogue import resources_directories  # noqa: E402
from ImagInfoExtension.segmentation.inference import segment_image  # noqa: E402
from ImagInfoExtension.segmentation.weights import load_network  # noqa: E402
from ImagInfoExtension.truth import MaskTruth, dice_per_class  # noqa: E402
from ImagInfoExtension.vessels import quantify_vessels, truth_from_design  # noqa: E402

DOSES_MGY = (0.2, 0.5, 1.0, 2.1, 3.0, 4.0)
RECONS = ("FBP", "IR", "DL")
#: A rotation and a noise seed no training run uses (training seeds are 10000 and above).
AXIS = (-0.61, 0.27, 0.74)
ANGLE_DEG = 21.0
SEED = 11


def _rounded(scores: dict[float, float]) -> dict[str, float | None]:
    return {f"{radius:g}": (None if np.isnan(value) else round(float(value), 4)) for radius, value in scores.items()}


def _mean(rows: list[dict], method: str, dose: float) -> dict[str, float | None]:
    chosen = [row[method] for row in rows if row["dose_mgy"] == dose]
    means = {}
    for radius in (f"{r:g}" for r in DEFAULT_RADII_MM):
        values = [row[radius] for row in chosen if row[radius] is not None]
        means[radius] = round(float(np.mean(values)), 4) if values else None
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doses", default=",".join(f"{d:g}" for d in DOSES_MGY), help="mGy, comma-separated")
    parser.add_argument("--recons", default=",".join(RECONS), help="comma-separated")
    args = parser.parse_args(argv)
    doses = tuple(float(d) for d in args.doses.split(","))
    recons = tuple(r.strip() for r in args.recons.split(","))
    torch.set_num_threads(2)

    stamp = time.perf_counter()
    bundle = resources_directories()[-1] / "Models" / training.MODEL_ID
    entry = entry_from_bundle(bundle, training.MODEL_ID)
    network = load_network(entry)
    grid = training.oblique_grid(AXIS, ANGLE_DEG)
    scanner = VirtualScanner(grid=grid)
    truth = MaskTruth(scanner.truth.label_image(), scanner.truth.truth_classes(), "virtual scanner")
    design_truth = truth_from_design(scanner.design)
    trained = training.training_grids(training.TrainingConfig())
    nearest_training_deg = min(training.angle_between_deg(g.grid, grid) for g in [*trained[0], trained[1]])
    setup_s = time.perf_counter() - stamp

    rows = []
    for dose in doses:
        for recon in recons:
            image = scanner.acquire(AcquisitionSettings(dose_mgy=dose, recon=recon, repetition=1, seed=SEED))
            stamp = time.perf_counter()
            model = segment_image(image, entry, network=network, device="cpu")
            model_s = time.perf_counter() - stamp
            stamp = time.perf_counter()
            vessels = quantify_vessels(image, truth=design_truth)
            graph_cut_s = time.perf_counter() - stamp
            row = {
                "dose_mgy": dose,
                "recon": recon,
                "model": _rounded(dice_per_class(truth, model.labels)),
                "graph_cut": _rounded(dice_per_class(truth, grid.to_sitk(vessels.labels))),
                "model_s": round(model_s, 2),
                "graph_cut_s": round(graph_cut_s, 2),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    summary = []
    for dose in doses:
        model, graph_cut = _mean(rows, "model", dose), _mean(rows, "graph_cut", dose)
        ratio = {
            radius: (round(model[radius] / graph_cut[radius], 3) if model[radius] and graph_cut[radius] else None)
            for radius in model
        }
        summary.append({"dose_mgy": dose, "model": model, "graph_cut": graph_cut, "ratio_model_to_graph_cut": ratio})
    document = {
        "benchmark": "segmentation_dice",
        "model": {"id": entry.id, "version": entry.version, "sha256": entry.weights.sha256},
        "peer": "graph cut (ImagInfoExtension.vessels.quantify_vessels, labels by nearest centreline radius)",
        "grid": {
            "size_ijk": list(grid.size_ijk),
            "spacing_mm": list(grid.spacing_mm),
            "rotation_axis": list(AXIS),
            "rotation_deg": ANGLE_DEG,
            "nearest_training_rotation_deg": round(nearest_training_deg, 2),
        },
        "noise_seed": SEED,
        "training_doses_mgy": list(training.TrainingConfig().doses_mgy),
        "metric": "Dice per radius class against the scanner's truth labels (ImagInfoExtension.truth.dice_per_class)",
        "setup_s": round(setup_s, 2),
        "mean_over_recons": summary,
        "acquisitions": rows,
        "software": software_versions(),
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
