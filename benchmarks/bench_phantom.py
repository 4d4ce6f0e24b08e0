"""Benchmark: generating one default-size phantom acquisition (target < 10 s).

Prints JSON. The peer is SimpleITK's classic way to make a noisy blurred image on
the same grid: SmoothingRecursiveGaussian for the PSF plus AdditiveGaussianNoise
(white noise, no texture); it does far less (no partial volume, no NPS), so the
ratio shows what our physics costs.
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension import __version__
from ImagInfoExtension.phantom import AcquisitionSettings, VirtualScanner


def main() -> None:
    started = time.perf_counter()
    scanner = VirtualScanner(size="default")
    first = scanner.acquire(AcquisitionSettings(1.0, "FBP", 1))
    first_s = time.perf_counter() - started

    timings = []
    for repetition in range(2, 5):
        t = time.perf_counter()
        scanner.acquire(AcquisitionSettings(1.0, "IR", repetition))
        timings.append(time.perf_counter() - t)
    next_s = float(np.median(timings))

    t = time.perf_counter()
    _ = scanner.truth
    truth_s = time.perf_counter() - t

    obj = scanner.grid.to_sitk(scanner.object_hu)
    t = time.perf_counter()
    blurred = sitk.SmoothingRecursiveGaussian(obj, 0.95 / 2.355)
    sitk.Cast(sitk.AdditiveGaussianNoise(blurred, 33.0, 0.0, 1), sitk.sitkInt16)
    peer_s = time.perf_counter() - t

    print(
        json.dumps(
            {
                "benchmark": "phantom_acquisition_default_size",
                "imaginfo_version": __version__,
                "machine": platform.machine(),
                "grid_size_ijk": list(first.GetSize()),
                "voxels_million": round(float(np.prod(first.GetSize())) / 1e6, 2),
                "first_acquisition_s": round(first_s, 2),
                "target_s": 10.0,
                "meets_target": first_s < 10.0,
                "next_acquisition_s": round(next_s, 3),
                "truth_s": round(truth_s, 2),
                "peer": "SimpleITK SmoothingRecursiveGaussian + AdditiveGaussianNoise (white noise, object given)",
                "peer_s": round(peer_s, 3),
                "next_acquisition_to_peer_ratio": round(next_s / peer_s, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
