"""Batch engine scaling: the same dose comparison on 1 and on 2 local Dask workers.

The study is the demo's virtual study (5 doses x 3 reconstructions x 2 repetitions,
small phantom). Each run starts from an empty output folder, so nothing comes from the
cache, and includes the local cluster's start-up. The peer of the 2-worker run is the
same engine with 1 worker, both with single-threaded cases so that the ratio measures
the engine's scaling; the target is a speed-up of at least 1.7 on 2 cores. A third run
gives the single worker both cores for SimpleITK's threads (the engine's default for
one worker), to show what the second core buys without the engine.

Prints one JSON document.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ImagInfoExtension.batch import default_workers  # noqa: E402
from ImagInfoExtension.dose.compare import compare_study  # noqa: E402
from ImagInfoExtension.phantom.study import StudyRequest, generate_study  # noqa: E402
from ImagInfoExtension.study.table import read_manifest  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "bench_results" / "batch"


def main() -> None:
    study_dir = RESULTS / "study"
    if not (study_dir / "manifest.csv").exists():
        generate_study(StudyRequest(repetitions=2, size="small"), study_dir)
    study = read_manifest(study_dir / "manifest.csv")
    runs = {}
    for name, workers, threads in (("one_worker", 1, 1), ("two_workers", 2, 1), ("one_worker_two_threads", 1, 2)):
        out = RESULTS / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = compare_study(study, out, truth=study_dir / "truth.json", workers=workers, threads_per_case=threads)
        wall = time.perf_counter() - started
        case_seconds = [o.runtime_s for o in result.batch.outcomes]
        runs[name] = {
            "wall_s": round(wall, 2),
            "batch_wall_s": result.batch.wall_s,
            "series": len(case_seconds),
            "failed": len(result.batch.failed),
            "mean_series_s": round(sum(case_seconds) / len(case_seconds), 2),
        }
    print(
        json.dumps(
            {
                "cores": default_workers(),
                "study": f"{len(study)} series (5 doses x 3 reconstructions x 2 repetitions, small phantom)",
                **runs,
                "speedup_batch": round(runs["one_worker"]["batch_wall_s"] / runs["two_workers"]["batch_wall_s"], 2),
                "speedup_whole_comparison": round(runs["one_worker"]["wall_s"] / runs["two_workers"]["wall_s"], 2),
                "speedup_vs_one_worker_two_threads": round(
                    runs["one_worker_two_threads"]["batch_wall_s"] / runs["two_workers"]["batch_wall_s"], 2
                ),
                "target_speedup": 1.7,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
