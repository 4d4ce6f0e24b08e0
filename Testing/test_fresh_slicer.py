"""A new user in a fresh Slicer: only the packages Slicer bundles, nothing installed yet.

``fresh_slicer_check.py`` runs in a child Python in which every installed package
that the Slicer release does not bundle is hidden (imports fail, metadata is gone).
There each module must load, register its sample data, show its panel, enable Apply
once its inputs are valid, and on Apply offer to install what it needs; declining
leaves a sentence, not a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install imaginfo[slicer-core])")

REPOSITORY = Path(__file__).resolve().parent.parent
API_FILE = REPOSITORY.parent / "shared" / "reference" / "slicer" / "slicer_python_api.json"
#: What ImagInfo uses beyond Slicer's bundle; none may be imported while a module loads.
OPTIONAL = {"pandas", "dask", "distributed", "matplotlib", "skimage", "openpyxl", "yaml", "torch", "monai", "radiomics"}


@pytest.fixture(scope="module")
def api():
    if not API_FILE.is_file():
        pytest.skip(f"{API_FILE} is absent: Slicer's facts live in ../shared/reference/slicer")
    return json.loads(API_FILE.read_text())["versions"]


@pytest.mark.parametrize("release, tag", [((5, 10), "v5.10.0"), ((5, 12), "v5.12.3")], ids=["5.10", "5.12"])
def test_modules_load_show_and_offer_to_install_with_only_what_slicer_bundles(api, tmp_path, release, tag):
    bundled = tmp_path / "bundled.json"
    bundled.write_text(json.dumps(api[tag]["bundled_python_packages"]))
    completed = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "Testing" / "fresh_slicer_check.py"),
            f"{release[0]}.{release[1]}",
            str(bundled),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert not OPTIONAL & set(report["blocked_attempts"]), "code tried to import optional packages at load"
    modules = sorted(p.parent.name for p in (REPOSITORY / "Modules" / "Scripted").glob("*/CMakeLists.txt"))
    assert sorted(report["modules"]) == modules
    for name, entry in report["modules"].items():
        error = entry.get("load_error") or entry.get("panel_error")
        assert error is None, f"{name}: {error}"
        assert entry["title"].startswith("ImagInfo") and "5.10" not in entry["help"], (
            "a supported Slicer gets no warning"
        )
        assert {"applyButton", "progressBar", "statusLabel"} <= set(entry["panel_widgets"])
        assert entry["apply_enabled_empty"] is False and entry["apply_tooltip_empty"], "Apply says what is missing"
        assert entry["apply_enabled_filled"] is True
        assert "pandas>=2.0" in entry["missing"]
        assert not entry["job_started"]
        assert "needed first" in entry["status_after_decline"] and "pandas" in entry["status_after_decline"]
        kinds = [kind for kind, _ in entry["events"]]
        assert "errorDisplay" not in kinds, "declining is not an error"
        asked = "pip_ensure" if release >= (5, 12) else "confirmOkCancelDisplay"
        assert kinds.count(asked) == 1 and "pandas" in dict(entry["events"])[asked]
    vessel, dose = report["modules"]["ImagInfoVesselPhantom"], report["modules"]["ImagInfoDoseComparison"]
    assert not any("dask" in m for m in vessel["missing"]), "the vessel module asks only for what it needs"
    assert "dask[distributed]>=2024.1" in dose["missing"]

    # Sample data: registered at startup with this release's API, generated only when asked.
    (registered,) = report["sample_data"]
    signature = api[tag]["api"]["Modules/Scripted/SampleData/SampleData.py"]["SampleDataLogic"]["methods"]
    assert set(registered) <= set(signature["registerCustomSampleDataSource"]["params"])
    assert registered["sampleName"] == "ImagInfoVesselPhantom" and "customDownloader" in registered
    assert len(registered["uris"]) == len(registered["fileNames"]) == len(registered["nodeNames"])
    # Asking for it offers the packages; declining is no error, and nothing is generated.
    assert report["sample_download"] == "loaded nothing"
    kinds = [kind for kind, _ in report["sample_events"]]
    assert kinds == ["pip_ensure" if release >= (5, 12) else "confirmOkCancelDisplay"]
