"""Long jobs as a child process: the JSON progress protocol, the runner, cancel, resume, outputs into nodes.

Under pytest the test environment's Python stands in for PythonSlicer; with the
harness's application, ``bin/PythonSlicer`` is a launcher script that runs Python as
its own child, as Slicer's launcher does, so cancel must end a process tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ImagInfoExtension.io import write_image
from ImagInfoExtension.progress import JsonProgress, ProgressEvent, parse_progress_line, stage

REPOSITORY = Path(__file__).resolve().parent.parent


def test_progress_lines_parse_back_and_end_at_total():
    import io

    stream = io.StringIO()
    reporter = JsonProgress(stream)
    reporter(0, 4, "start")
    reporter(3, 4, 'quote " and ünïcode')
    reporter.close(succeeded=True)
    lines = stream.getvalue().splitlines()
    events = [parse_progress_line(line) for line in lines]
    assert events == [
        ProgressEvent(0, 4, "start"),
        ProgressEvent(3, 4, 'quote " and ünïcode'),
        ProgressEvent(4, 4, "finished"),
    ]
    for junk in ("", "Traceback (most recent call last):", "{not json", '{"done": 1}', '["done", "total"]', "{}"):
        assert parse_progress_line(junk) is None
    failed = io.StringIO()
    reporter = JsonProgress(failed)
    reporter(1, 4, "one")
    reporter.close(succeeded=False)
    assert failed.getvalue().count("\n") == 1, "a failed run does not claim to be finished"
    seen = []
    overall = stage(lambda d, t, m: seen.append((d, t)), 10, 20, 40)
    overall(0, 5, "")
    overall(5, 5, "")
    assert seen == [(10, 40), (30, 40)]


@pytest.fixture(scope="module")
def cylinders(tmp_path_factory):
    from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom

    folder = tmp_path_factory.mktemp("cylinders")
    phantom = make_cylinder_phantom((0.75, 1.5, 3.0), copies=1, seed=2)
    write_image(phantom.image, folder / "image.nrrd")
    return folder / "image.nrrd"


def _run_imaginfo(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ImagInfoExtension", *arguments], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_every_long_command_reports_json_progress(cylinders, tmp_path):
    completed = _run_imaginfo(["vessels", str(cylinders), "--out", str(tmp_path / "v"), "--progress", "json"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    events = [parse_progress_line(line) for line in completed.stderr.splitlines()]
    events = [e for e in events if e is not None]
    assert len(events) >= 5
    assert all(e.total == events[0].total for e in events)
    assert [e.done for e in events] == sorted(e.done for e in events), "progress only rises"
    assert events[-1].done == events[-1].total
    assert "total vessel volume" in completed.stdout, "results still go to stdout"
    # Without the flag: the terminal bar, no JSON.
    plain = _run_imaginfo(["vessels", str(cylinders), "--out", str(tmp_path / "w")], tmp_path)
    assert plain.returncode == 0 and not any(parse_progress_line(line) for line in plain.stderr.splitlines())
    assert "vessels:" in plain.stderr and "%" in plain.stderr
    parser_text = _run_imaginfo(["--help"], tmp_path).stdout
    for command in ("phantom", "sample", "demo", "vessels", "compare", "study"):
        help_text = _run_imaginfo([command, "--help"], tmp_path).stdout
        assert "--progress {bar,json,none}" in help_text, f"imaginfo {command} lacks --progress"
        assert command in parser_text


def test_a_failing_command_reports_its_own_error_and_no_finished_line(tmp_path):
    (tmp_path / "broken.nrrd").write_text("not an image")
    completed = _run_imaginfo(["vessels", str(tmp_path / "broken.nrrd"), "--progress", "json"], tmp_path)
    assert completed.returncode == 2
    assert "could not be read as an image" in completed.stderr
    events = [e for e in map(parse_progress_line, completed.stderr.splitlines()) if e is not None]
    assert not events or events[-1].done < events[-1].total


# ----------------------------------------------------------------------------------------
# The runner


def test_runner_runs_the_real_command_on_the_small_phantom_and_loads_nodes(tmp_path):
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    from ImagInfoExtension import bridge
    from ImagInfoExtension.bridge.process import SUCCEEDED, ChildJob
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.phantom.study import write_sample_data
    from ImagInfoExtension.vessels.quantify import read_results

    paths = write_sample_data(tmp_path / "sample")
    out = tmp_path / "out"
    job = ChildJob(
        "vessels",
        [str(paths["volume"]), "--truth", str(paths["truth"]), "--out", str(out)],
        read_result=lambda: read_results(out),
    )
    seen = []
    while not job.finished:
        seen.append(job.poll())
        time.sleep(0.05)
    assert job.state == SUCCEEDED, job.error_message
    assert len({e.done for e in seen}) > 3, "progress arrives while the child runs"
    result = job.result()
    job.close()
    assert not job.work_dir.exists()
    assert result.total_volume_ml == pytest.approx(6.80, rel=0.15)
    three = result.per_radius.set_index("radius_mm").loc[3.0]
    assert three["detection_rate"] > 0.95

    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(read_image(paths["volume"]), scene, "CT")
    segments = [
        bridge.SegmentDescription(label=c["index"], name=c["name"], color=tuple(c["color"]))
        for c in result.summary["classes"]
    ]
    present = {int(v) for v in pd.unique(result.labels.ravel())} - {0}
    node = bridge.segmentation_node_from_label_map(
        result.grid.to_sitk(result.labels), scene, [s for s in segments if s.label in present], "vessels", volume
    )
    back = bridge.label_map_from_segmentation_node(node, volume)
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(back.image)
    names = {s.label: s.name for s in back.segments}
    remapped = {
        s.label: next(c["index"] for c in result.summary["classes"] if c["name"] == names[s.label])
        for s in back.segments
    }
    assert all((result.labels[labels == label] == index).all() for label, index in remapped.items())
    table = bridge.table_node_from_dataframe(result.per_radius, scene, "per radius")
    assert bridge.dataframe_from_table_node(table)["volume_ml"].tolist() == pytest.approx(
        result.per_radius["volume_ml"].tolist()
    )


def test_runner_reports_the_childs_error(tmp_path):
    from ImagInfoExtension.bridge.process import FAILED, ChildJob, JobFailedError

    (tmp_path / "flat.nrrd").write_text("")
    with ChildJob("vessels", [str(tmp_path / "flat.nrrd"), "--out", str(tmp_path / "out")]) as job:
        job.wait(timeout_s=120)
        assert job.state == FAILED
        with pytest.raises(JobFailedError, match="could not be read as an image"):
            job.result()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find leftover processes")
def test_the_child_ends_itself_when_its_parent_goes_away(tiny_study, tmp_path):
    """If Slicer quits or crashes, the pipe on the child's stdin closes and the child stops."""
    from ImagInfoExtension.bridge.process import ChildJob

    out = tmp_path / "out"
    arguments = ["--manifest", str(tiny_study / "manifest.csv"), "--out", str(out), "--workers", "0"]
    job = ChildJob("compare", arguments)
    while not (out / "cases").is_dir() and not job.finished:  # the child is measuring
        job.poll()
        time.sleep(0.05)
    job.process.stdin.close()  # what the parent's death does to the pipe
    deadline = time.time() + 60
    while job.process.poll() is None:
        assert time.time() < deadline, "the child did not notice its parent had gone"
        time.sleep(0.1)
    assert job.process.returncode == 130
    job.poll()
    assert job.state == "failed" and "cancelled: 0 of 6 case(s) finished" in job.error_message
    assert not _group_alive(job.process.pid)
    job.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find leftover processes")
def test_cancel_ends_the_whole_process_tree_keeps_finished_series_and_resumes(tiny_study, tmp_path):
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    import slicer_harness

    from ImagInfoExtension.bridge.process import CANCELLED, ChildJob
    from ImagInfoExtension.dose.results import read_comparison

    out = tmp_path / "comparison"
    manifest = pd.read_csv(tiny_study / "manifest.csv").query("repetition == 1")
    manifest.assign(path=[str(tiny_study / p) for p in manifest["path"]]).to_csv(tmp_path / "three.csv", index=False)
    arguments = ["--manifest", str(tmp_path / "three.csv"), "--out", str(out), "--workers", "2"]
    with slicer_harness.application((5, 12)) as app:
        job = ChildJob("compare", arguments, output_dir=out)
        assert job.arguments[0] == str(Path(app.slicerHome) / "bin" / "PythonSlicer"), "run through the launcher"
        deadline = time.time() + 180
        while time.time() < deadline and len(list((out / "cases").glob("*.json"))) < 1:
            job.poll()
            time.sleep(0.1)

        workers = _processes_mentioning(str(out))
        assert len(workers) >= 1
        job.cancel(wait=True)
        assert job.state == CANCELLED
        assert not _group_alive(job.process.pid), "the launcher, Python and the Dask workers are gone"
        assert not [pid for pid in _processes_mentioning("distributed") if os.getpgid(pid) == job.process.pid]
        assert not _processes_mentioning(str(out)), "no process of the run is left"
        job.close()
    finished = sorted((out / "cases").glob("*.json"))
    assert 1 <= len(finished) < 3, "cancelled part-way"
    for path in finished:
        assert json.loads(path.read_text())["status"] in ("ok", "failed"), "every record is whole"
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".partial-")]
    assert not leftovers, f"partial files left: {leftovers}"
    for name in ("report.html", "results_long.csv", "summary.csv"):
        assert not (out / name).exists(), f"{name} is an output of a finished run only"
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    with ChildJob("compare", arguments, read_result=lambda: read_comparison(out)) as rerun:
        result = rerun.wait(timeout_s=300).result()
    assert len(result.batch.cached) == len(finished), "the re-run resumes from the finished series"
    assert len(result.batch.succeeded) == 3 and result.failures.empty
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp, f"{path.name} was computed again"
    assert (out / "report.html").is_file()
