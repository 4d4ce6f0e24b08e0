"""The study platform: study tables with any factors, the runner and its plugins, the metric
registry, provenance, cancelling, thread caps, and the package's import graph."""

from __future__ import annotations

import ast
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ImagInfoExtension.batch import BatchCase, run_batch
from ImagInfoExtension.metrics import Metric, metric, register, registered
from ImagInfoExtension.progress import Cancelled
from ImagInfoExtension.provenance import NOT_INSTALLED, RECORDED_DISTRIBUTIONS, software_versions
from ImagInfoExtension.study.plugins import BUILTIN_PLUGINS, Measurement, SeriesContext, load_plugin
from ImagInfoExtension.study.runner import run_study
from ImagInfoExtension.study.table import read_manifest, study_factors, validate_study

PACKAGE = Path(__file__).resolve().parents[1] / "ImagInfoExtension"


# --- the study table --------------------------------------------------------------------


def test_factors_are_the_study_columns_not_a_fixed_set(tmp_path):
    table = pd.DataFrame(
        {
            "path": ["a.nrrd", "b.nrrd", "c.nrrd", "d.nrrd"],
            "kernel": ["B30", "B30", "B70", "B30"],
            "noise_level": [1, 1, 1, 2],
            "dicom_dir": ["x", "y", "z", "w"],
            "series_description": ["s"] * 4,
        }
    )
    table.to_csv(tmp_path / "study.csv", index=False)
    study = read_manifest(tmp_path / "study.csv")
    assert study_factors(study) == ["kernel", "noise_level", "repetition"]
    # The repeated condition (B30, level 1) is numbered in row order; the others are repetition 1.
    b30 = study[(study["kernel"] == "B30") & (study["noise_level"] == 1)]
    assert b30["repetition"].tolist() == [1, 2] and b30["path"].str.endswith(("a.nrrd", "b.nrrd")).all()
    assert list(study.columns[:4]) == ["path", "kernel", "noise_level", "repetition"]
    assert study["path"].map(lambda p: Path(p).is_absolute()).all(), "paths are read relative to the CSV"


def test_study_table_errors_name_the_row_and_the_fix():
    with pytest.raises(ValueError, match="row 2: kernel is empty"):
        validate_study(pd.DataFrame({"path": ["a", "b"], "kernel": ["B30", None]}))
    with pytest.raises(ValueError, match="two series share kernel B30, repetition 1"):
        validate_study(pd.DataFrame({"path": ["a", "b"], "kernel": ["B30", "B30"], "repetition": [1, 1]}))
    with pytest.raises(ValueError, match="no factor columns"):
        validate_study(pd.DataFrame({"path": ["a"], "series_uid": ["1.2"]}))
    with pytest.raises(ValueError, match="repetition 1.5 is not a whole number"):
        validate_study(pd.DataFrame({"path": ["a"], "kernel": ["B30"], "repetition": [1.5]}))
    with pytest.raises(ValueError, match="lacks the column.*dose_mgy"):
        validate_study(pd.DataFrame({"path": ["a"], "kernel": ["B30"]}), ("recon", "dose_mgy", "repetition"))


# --- the runner and its plugins ---------------------------------------------------------


class MeanPlugin:
    """Mean and SD of the whole image; warns about a metric it never measures."""

    name = "mean"
    metrics = ("mean_hu", "sd_hu", "unmeasurable_hu")

    def settings(self, given: dict) -> dict:
        unknown = set(given) - {"offset_hu"}
        if unknown:
            raise ValueError(f"mean plugin: unknown setting(s) {sorted(unknown)}")
        return {"offset_hu": 0.0, **given}

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        values = sitk.GetArrayViewFromImage(series.image)
        measurement = Measurement(shared=float(values.mean()))
        measurement.add("mean_hu", values.mean() + settings["offset_hu"])
        measurement.add("sd_hu", values.std())
        measurement.add("unmeasurable_hu", float("nan"))
        measurement.warn("unmeasurable_hu", "this test plugin never measures it")
        return measurement


class PerClassPlugin:
    """Per-class rows that use what the plugin before it found."""

    name = "per_class"
    metrics = ("class_mean_hu",)

    def settings(self, given: dict) -> dict:
        return dict(given)

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        mean = series.earlier["mean"].shared
        measurement = Measurement()
        for radius in (1.0, 2.0):
            measurement.add("class_mean_hu", mean * radius, radius_mm=radius)
        return measurement


class FailingPlugin:
    name = "failing"
    metrics = ("never_hu",)

    def settings(self, given: dict) -> dict:
        return {}

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        raise ValueError("this phantom has no such insert")


def _constant_image(path: Path, value: float, seed: int) -> str:
    rng = np.random.default_rng(seed)
    array = (value + rng.normal(0, 5, (6, 12, 12))).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.5))
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def kernel_study(tmp_path):
    rows = []
    for n, (kernel, level) in enumerate([("B30", 10.0), ("B30", 12.0), ("B70", 50.0)]):
        rows.append({"path": _constant_image(tmp_path / f"s{n}.nrrd", level, n), "kernel": kernel, "mgy": 1.0})
    (tmp_path / "broken.nrrd").write_text("not an image")
    rows.append({"path": str(tmp_path / "broken.nrrd"), "kernel": "B90", "mgy": 1.0})
    return validate_study(pd.DataFrame(rows))


def test_the_runner_runs_any_plugins_over_any_factors(kernel_study, tmp_path):
    plugins = [f"{__name__}:MeanPlugin", f"{__name__}:PerClassPlugin", f"{__name__}:FailingPlugin"]
    run = run_study(kernel_study, plugins, tmp_path / "out", {"mean": {"offset_hu": 1.0}}, workers=0)
    assert run.factors == ["kernel", "mgy", "repetition"]
    assert list(run.long.columns) == ["kernel", "mgy", "repetition", "radius_mm", "metric", "value"]
    means = run.long[run.long["metric"] == "mean_hu"].set_index(["kernel", "repetition"])["value"]
    for row in kernel_study.iloc[:3].itertuples():
        expected = sitk.GetArrayFromImage(sitk.ReadImage(row.path)).mean() + 1.0
        assert means[(row.kernel, row.repetition)] == pytest.approx(expected, rel=1e-6)
    per_class = run.long[run.long["metric"] == "class_mean_hu"]
    assert sorted(per_class["radius_mm"].unique()) == [1.0, 2.0] and len(per_class) == 6
    assert not run.long["metric"].eq("unmeasurable_hu").any(), "NaN is never a row"
    # A broken series is a failure with its factors; a failing plugin leaves its metrics out with the reason.
    assert run.failures[["kernel", "repetition"]].values.tolist() == [["B90", 1]]
    assert "could not be read" in run.failures["error"].iloc[0]
    reasons = run.warnings.groupby("metric")["reason"].first()
    assert reasons["unmeasurable_hu"] == "this test plugin never measures it"
    assert "the failing plugin failed: ValueError: this phantom has no such insert" in reasons["never_hu"]
    assert (run.warnings.groupby("metric").size() == 3).all(), "one warning per measured series"
    again = run_study(kernel_study, plugins, tmp_path / "out", {"mean": {"offset_hu": 1.0}}, workers=0)
    assert len(again.batch.cached) == 3
    pd.testing.assert_frame_equal(again.long, run.long)


def test_unknown_plugins_and_settings_are_refused(kernel_study, tmp_path):
    with pytest.raises(ValueError, match="unknown measurement plugin 'lung_density'"):
        load_plugin("lung_density")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_plugin("no_such_module:Plugin")
    with pytest.raises(ValueError, match="settings for plugin.*per_class"):
        run_study(kernel_study, [f"{__name__}:MeanPlugin"], tmp_path, {"per_class": {}}, workers=0)
    with pytest.raises(ValueError, match="image_quality plugin: unknown setting"):
        load_plugin("image_quality").settings({"roi_size": 3})
    with pytest.raises(ValueError, match="vessels plugin: unknown setting"):
        load_plugin("vessels").settings({"vesel_hu": 3})
    with pytest.raises(ValueError, match="radiomics plugin: unknown setting"):
        load_plugin("radiomics").settings({"preset_name": "ct"})
    with pytest.raises(ValueError, match="radiomics plugin: segments"):
        load_plugin("radiomics").settings({"segments": ["lungs"]})


# --- one metric registry ----------------------------------------------------------------

_SUFFIX_UNITS = {"_hu": "HU", "_mm": "mm", "_ml": "ml", "_per_mm": "mm⁻¹", "_s": "s"}


def test_every_plugin_metric_is_registered_with_the_unit_its_name_states():
    for spec in BUILTIN_PLUGINS:
        plugin = load_plugin(spec)
        for key in plugin.metrics:
            entry = registered().get(key)
            assert entry is not None, f"{spec} reports {key}, which the registry lacks"
            suffix = max((s for s in _SUFFIX_UNITS if key.endswith(s)), key=len, default=None)
            assert entry.unit == (_SUFFIX_UNITS[suffix] if suffix else ""), key
            assert entry.label.startswith(entry.title)


def test_registry_drives_formats_and_table_node_units():
    from ImagInfoExtension.bridge.tables import unit_of

    assert metric("noise_sd_hu").format_mean_sd(12.345, 0.26) == "12.3 ± 0.3"
    assert metric("total_volume_ml").format_mean_sd(5.3333, float("nan")) == "5.33 ± –"
    assert metric("mpv_hu").format_mean_sd(float("nan"), 1.0) == ""
    assert metric("volume_ml").dicom_code == ("118565006", "SCT", "Volume")
    assert unit_of("ttf50_per_mm") == "mm⁻¹" and unit_of("cnr") == "" and unit_of("dose_mgy") == "mGy"
    assert metric("not_registered_hu").title == "not registered hu"
    with pytest.raises(ValueError, match="already registered differently"):
        register(Metric("mpv_hu", "something else", "HU"))
    with pytest.raises(ValueError, match="scope must be"):
        Metric("x", "x", scope="voxel")


# --- outputs flow one way -----------------------------------------------------------------


def _imports(path: Path, module: str) -> set[str]:
    """Every ImagInfoExtension module ``path`` imports, at load or inside functions, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = set()
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("ImagInfoExtension")}


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_the_package_has_no_import_circles():
    graph = _module_graph()
    assert "ImagInfoExtension.cli" not in graph["ImagInfoExtension.demo"]
    assert "ImagInfoExtension.dose.compare" not in graph["ImagInfoExtension.dose.report"]
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == [], f"import circles: {circles}"


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check itself can fail: the old compare <-> report pair is a circle to it."""
    compare = "from ImagInfoExtension.dose.report import write\n"
    report = "def f():\n    from ImagInfoExtension.dose.compare import provenance\n"
    (tmp_path / "compare.py").write_text(compare)
    (tmp_path / "report.py").write_text(report)
    assert _imports(tmp_path / "compare.py", "ImagInfoExtension.dose.compare") >= {"ImagInfoExtension.dose.report"}
    assert "ImagInfoExtension.dose.compare" in _imports(tmp_path / "report.py", "ImagInfoExtension.dose.report")


# --- provenance in one place ----------------------------------------------------------------


def test_provenance_records_every_library_including_the_deep_learning_ones():
    versions = software_versions()
    for name in ("torch", "monai", "pyradiomics", "SimpleITK", "numpy", "scipy", "scikit-image", "pandas"):
        assert name in versions
    for name in RECORDED_DISTRIBUTIONS:
        try:
            assert versions[name] == metadata.version(name)
        except metadata.PackageNotFoundError:
            assert versions[name] == NOT_INSTALLED
    assert versions["torch"] != NOT_INSTALLED, "make test installs torch; its version must be recorded"


# --- one cancellation convention ----------------------------------------------------------


def _slow_square(payload: dict, parameters: dict) -> dict:
    return {"y": payload["x"] ** 2}


@pytest.mark.parametrize("workers", [0, 2])
def test_cancelling_from_progress_keeps_finished_cases(tmp_path, workers):
    cases = [BatchCase(f"case{x}", {"x": x}, {"x": x}) for x in range(4)]

    def cancel_after_first(done, total, message):
        if done >= 1:
            raise Cancelled("the user clicked Cancel")

    with pytest.raises(Cancelled, match=r"cancelled: \d of 4 case\(s\) finished and are kept in .*run again"):
        run_batch(_slow_square, cases, {}, tmp_path, workers=workers, progress=cancel_after_first)
    finished = len(list(tmp_path.glob("*.json")))
    assert finished >= 1
    resumed = run_batch(_slow_square, cases, {}, tmp_path, workers=0)
    assert len(resumed.cached) == finished and [o.result["y"] for o in resumed.outcomes] == [0, 1, 4, 9]


def test_cancelled_is_an_interrupt_not_an_error():
    """A batch records a job's errors as failed cases; a cancel must not be caught as one."""
    assert issubclass(Cancelled, KeyboardInterrupt) and not issubclass(Cancelled, Exception)


# --- thread caps -------------------------------------------------------------------------


def _threads_seen(payload: dict, parameters: dict) -> dict:
    import SimpleITK
    from threadpoolctl import threadpool_info

    seen = {
        "simpleitk": SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "blas": sorted({pool["num_threads"] for pool in threadpool_info()}),
        "omp_env": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import torch

        seen["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return seen


def test_each_worker_caps_simpleitk_blas_and_torch_threads(tmp_path):
    cases = [BatchCase(f"case{n}", {"n": n}, {"n": n}) for n in range(2)]
    summary = run_batch(_threads_seen, cases, {}, tmp_path, workers=2, threads_per_case=1)
    for outcome in summary.outcomes:
        assert outcome.status == "ok", outcome.error
        seen = outcome.result
        assert seen["simpleitk"] == 1 and seen["blas"] == [1] and seen["omp_env"] == "1", seen
        assert seen.get("torch", 1) == 1, seen
