"""Surface metrics: ours (HD95, ASSD and NSD from one pass) against MONAI's on a 512×512×400 pair.

The pair: four organ-sized blobs (a liver, a spleen, two kidneys: 0.1–1.6 l) and five
lesions (5–15 mm radius) in one binary mask on a 512×512×400 grid of 0.8×0.8×1.5 mm; the
prediction is a copy whose surfaces are perturbed smoothly (a few per cent of each radius)
and shifted by up to 2 mm. Both are labelled masks of one label: MONAI gets them as a
float one-hot tensor [1, 1, k, j, i] built before its timer starts (its usual input), ours
as boolean arrays.

Timed in the same run, each method in its own spawned process (so that its peak resident
memory is its own; torch with its default threads):

- peer: MONAI 1.6.1 ``compute_hausdorff_distance(percentile=95)`` then
  ``compute_average_surface_distance(symmetric=True)``, both with the same spacing;
- ours: :func:`ImagInfoExtension.segmentation.evaluation.surface_metrics` (HD, HD95,
  ASSD and NSD at 1 mm from one set of distances).

Each method runs ``REPEATS`` times; the best time is reported. The values must agree to
1e-6 relative (NSD at 1 mm is compared too, outside MONAI's timer). Peak memory: the
process's high-water resident memory (VmHWM) minus its resident memory once the inputs are
loaded, and tracemalloc's peak of ours (numpy buffers).

Prints one JSON object.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE_KJI = (400, 512, 512)
SPACING_IJK = (0.8, 0.8, 1.5)
REPEATS = 3

#: (centre (i, j, k) mm, semi-axes (i, j, k) mm) of the blobs.
ORGANS = {
    "liver": ((130.0, 170.0, 330.0), (85.0, 70.0, 75.0)),
    "spleen": ((300.0, 230.0, 340.0), (55.0, 35.0, 55.0)),
    "kidney_left": ((270.0, 250.0, 240.0), (30.0, 27.0, 55.0)),
    "kidney_right": ((140.0, 250.0, 230.0), (30.0, 27.0, 55.0)),
    "lesion_1": ((200.0, 120.0, 420.0), (15.0, 14.0, 13.0)),
    "lesion_2": ((90.0, 300.0, 150.0), (8.0, 9.0, 8.0)),
    "lesion_3": ((320.0, 120.0, 200.0), (5.0, 5.0, 6.0)),
    "lesion_4": ((210.0, 330.0, 480.0), (12.0, 10.0, 11.0)),
    "lesion_5": ((60.0, 150.0, 420.0), (6.0, 6.0, 6.0)),
}


def _paint(mask: np.ndarray, centre_ijk, axes_ijk, rng: np.random.Generator, amplitude: float, shift_mm) -> None:
    """OR an ellipsoid whose radius varies smoothly with direction into ``mask`` (in its own box)."""
    spacing = np.asarray(SPACING_IJK)
    centre = np.asarray(centre_ijk) + np.asarray(shift_mm)
    reach = np.asarray(axes_ijk) * (1.0 + 3 * amplitude) + 2 * spacing
    low = np.maximum(np.floor((centre - reach) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((centre + reach) / spacing).astype(int) + 1, np.asarray(SHAPE_KJI[::-1]))
    k, j, i = np.ogrid[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
    x = (i * spacing[0] - centre[0]) / axes_ijk[0]
    y = (j * spacing[1] - centre[1]) / axes_ijk[1]
    z = (k * spacing[2] - centre[2]) / axes_ijk[2]
    rho = np.sqrt(x * x + y * y + z * z)
    theta = np.arccos(np.clip(z / np.maximum(rho, 1e-9), -1, 1))
    phi = np.arctan2(y, x)
    wobble = np.zeros_like(rho)
    for order in (2, 3, 4):
        a, b = rng.uniform(0, 2 * np.pi, 2)
        wobble += np.cos(order * phi + a) * np.sin(order * theta + b) / order
    mask[low[2] : high[2], low[1] : high[1], low[0] : high[0]] |= rho < 1.0 + amplitude * wobble


def make_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE_KJI, dtype=bool)
    prediction = np.zeros(SHAPE_KJI, dtype=bool)
    for centre, axes in ORGANS.values():
        _paint(truth, centre, axes, rng, 0.04, (0.0, 0.0, 0.0))
        _paint(prediction, centre, axes, rng, 0.06, rng.uniform(-2.0, 2.0, 3))
    return prediction, truth


def _resident_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def _run(job: str, folder: str, queue) -> None:
    prediction = np.load(Path(folder) / "prediction.npy")
    truth = np.load(Path(folder) / "truth.npy")
    spacing_kji = tuple(reversed(SPACING_IJK))
    if job == "monai":
        import torch
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

        y_pred = torch.from_numpy(prediction[None, None].astype(np.float32))
        y = torch.from_numpy(truth[None, None].astype(np.float32))
        del prediction, truth
        baseline = _resident_mb("VmRSS")
        times, values = [], {}
        for _ in range(REPEATS):
            started = time.perf_counter()
            hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing_kji)
            assd = compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=spacing_kji
            )
            times.append(time.perf_counter() - started)
            values = {"hd95_mm": float(hd95.item()), "assd_mm": float(assd.item())}
        extra_rss = _resident_mb("VmHWM") - baseline
        nsd = compute_surface_dice(y_pred, y, [1.0], include_background=True, spacing=spacing_kji)  # untimed
        values["nsd_1mm"] = float(nsd.item())
        queue.put(
            {
                "seconds": min(times),
                "all_seconds": times,
                "torch_threads": torch.get_num_threads(),
                "values": values,
                "extra_peak_rss_mb": extra_rss,
            }
        )
        return
    from ImagInfoExtension.segmentation.evaluation import surface_metrics

    baseline = _resident_mb("VmRSS")
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        metrics = surface_metrics(prediction, truth, SPACING_IJK, tolerance_mm=1.0)
        times.append(time.perf_counter() - started)
    extra_rss = _resident_mb("VmHWM") - baseline
    tracemalloc.start()
    surface_metrics(prediction, truth, SPACING_IJK, tolerance_mm=1.0)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    queue.put(
        {
            "seconds": min(times),
            "all_seconds": times,
            "values": {
                "hd95_mm": metrics.hd95_mm,
                "assd_mm": metrics.assd_mm,
                "hd_mm": metrics.hd_mm,
                "nsd_1mm": metrics.nsd,
                "prediction_surface_voxels": metrics.prediction_surface_voxels,
                "truth_surface_voxels": metrics.truth_surface_voxels,
            },
            "extra_peak_rss_mb": extra_rss,
            "tracemalloc_peak_mb": traced_peak / 2**20,
        }
    )


def timed(job: str, folder: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(job, folder, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> dict:
    started = time.perf_counter()
    prediction, truth = make_pair()
    voxel_ml = float(np.prod(SPACING_IJK)) / 1000.0
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "prediction.npy", prediction)
        np.save(Path(folder) / "truth.npy", truth)
        volumes = {"prediction_ml": int(prediction.sum()) * voxel_ml, "truth_ml": int(truth.sum()) * voxel_ml}
        del prediction, truth
        ours = timed("ours", folder)
        monai = timed("monai", folder)
    agreement = {
        key: abs(ours["values"][key] - monai["values"][key]) / abs(monai["values"][key])
        for key in ("hd95_mm", "assd_mm", "nsd_1mm")
    }
    return {
        "benchmark": "surface metrics, 512x512x400 pair, spacing 0.8x0.8x1.5 mm",
        "shape_kji": SHAPE_KJI,
        "spacing_ijk_mm": SPACING_IJK,
        "volumes": volumes,
        "ours_seconds": round(ours["seconds"], 3),
        "monai_seconds": round(monai["seconds"], 3),
        "speedup": round(monai["seconds"] / ours["seconds"], 2),
        "target_speedup": 2.0,
        "ours_all_seconds": [round(t, 3) for t in ours["all_seconds"]],
        "monai_all_seconds": [round(t, 3) for t in monai["all_seconds"]],
        "monai_torch_threads": monai["torch_threads"],
        "ours_values": ours["values"],
        "monai_values": monai["values"],
        "relative_difference": agreement,
        "values_equal_1e-6": all(v <= 1e-6 for v in agreement.values()),
        "ours_extra_peak_rss_mb": round(ours["extra_peak_rss_mb"], 1),
        "ours_tracemalloc_peak_mb": round(ours["tracemalloc_peak_mb"], 1),
        "monai_extra_peak_rss_mb": round(monai["extra_peak_rss_mb"], 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
