"""What running a module's job as a child process costs, against running it in the GUI's process.

One vessel quantification of the sample phantom (small grid, FBP 1 mGy, with its
truth) three ways, in one run:

- ``in_process``: ``quantify_vessels`` called directly (what a blocking module does;
  the GUI freezes for the whole run);
- ``thread``: the same call on a Python worker thread while the main thread ticks a
  20 ms timer, as the modules did before (the GIL and, in Slicer, the missing PythonQt
  thread support delay the GUI);
- ``child``: ``imaginfo vessels`` through ``bridge.process.ChildJob`` while the main
  thread ticks and polls the child's progress, including the child's start, writing
  and reading the outputs.

Prints JSON: wall times, the child's overhead over in-process, and for the two
background ways the longest gap between main-thread ticks (what a user feels as a
frozen GUI) and the cost of one ``poll()``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ImagInfoExtension.bridge.process import ChildJob  # noqa: E402
from ImagInfoExtension.io import read_image  # noqa: E402
from ImagInfoExtension.phantom.study import write_sample_data  # noqa: E402
from ImagInfoExtension.vessels import load_truth, quantify_vessels  # noqa: E402
from ImagInfoExtension.vessels.quantify import read_results  # noqa: E402

TICK_S = 0.02


def _ticks_while(running) -> dict:
    """Tick the main thread every 20 ms while ``running()``; the longest gap between ticks."""
    gaps, last = [], time.perf_counter()
    while running():
        time.sleep(TICK_S)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    return {"max_tick_gap_ms": round(1000 * max(gaps, default=0.0), 1), "ticks": len(gaps)}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    paths = write_sample_data(folder / "sample")
    image, truth = read_image(paths["volume"]), load_truth(paths["truth"])

    started = time.perf_counter()
    reference = quantify_vessels(image, truth=truth)
    in_process_s = time.perf_counter() - started

    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", quantify_vessels(image, truth=truth)))
    started = time.perf_counter()
    worker.start()
    thread_ticks = _ticks_while(worker.is_alive)
    thread_s = time.perf_counter() - started

    out = folder / "child"
    polls: list[float] = []
    started = time.perf_counter()
    job = ChildJob(
        "vessels",
        [str(paths["volume"]), "--truth", str(paths["truth"]), "--out", str(out)],
        read_result=lambda: read_results(out),
    )

    def running() -> bool:
        before = time.perf_counter()
        job.poll()
        polls.append(time.perf_counter() - before)
        return not job.finished

    child_ticks = _ticks_while(running)
    result = job.result()
    child_s = time.perf_counter() - started
    job.close()
    assert abs(result.total_volume_ml - reference.total_volume_ml) < 1e-9, "the child computes the same result"

    print(
        json.dumps(
            {
                "benchmark": "child-process runner vs in-process and thread (vessels, sample phantom)",
                "in_process_s": round(in_process_s, 2),
                "thread_s": round(thread_s, 2),
                "child_s": round(child_s, 2),
                "child_over_in_process": round(child_s / in_process_s, 2),
                "child_overhead_s": round(child_s - in_process_s, 2),
                "thread": thread_ticks,
                "child": {
                    **child_ticks,
                    "poll_mean_us": round(1e6 * sum(polls) / len(polls), 1),
                    "poll_max_us": round(1e6 * max(polls), 1),
                },
                "same_total_volume_ml": round(result.total_volume_ml, 6),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
