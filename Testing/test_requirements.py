"""Python requirements inside Slicer: per-module lists, extras, pip_ensure or pip_install, every tree layout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ImagInfoExtension.bridge import requirements

REPOSITORY = Path(__file__).resolve().parent.parent
MODULES = sorted(p.name for p in (REPOSITORY / "Modules" / "Scripted").glob("*") if (p / "CMakeLists.txt").is_file())


def test_every_module_has_a_list_and_asks_only_for_what_it_needs():
    lists = {name: requirements.module_requirements(name) for name in MODULES}
    assert all(lists.values())
    names = {
        module: {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in found} for module, found in lists.items()
    }
    assert "dask" not in names["ImagInfoVesselPhantom"] and "matplotlib" not in names["ImagInfoVesselPhantom"]
    assert {"pandas", "scikit-image"} <= names["ImagInfoVesselPhantom"]
    assert names["ImagInfoVesselPhantom"] <= names["ImagInfoDoseComparison"], "-r includes the vessel list"
    assert "dask[distributed]>=2024.1" in lists["ImagInfoDoseComparison"]
    assert "torch" not in names["ImagInfoSegmentation"], "torch comes through Slicer's PyTorch extension, never pip"
    assert {"pandas", "monai", "safetensors"} <= names["ImagInfoSegmentation"]


def test_every_requirement_is_a_dependency_of_the_package():
    import tomllib

    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["dependencies"]
    for module in MODULES:
        for requirement in requirements.module_requirements(module):
            assert requirement in declared, f"{module} asks for {requirement}, which pyproject.toml does not declare"


def test_unknown_module_and_bad_lines_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="known: .*ImagInfoVesselPhantom"):
        requirements.requirements_file("NoSuchModule")
    (tmp_path / "a.txt").write_text("-r b.txt\npandas\n")
    (tmp_path / "b.txt").write_text("-r a.txt\n")
    with pytest.raises(ValueError, match="includes itself"):
        requirements.read_requirements(tmp_path / "a.txt")
    (tmp_path / "c.txt").write_text("--index-url https://example.org\n")
    with pytest.raises(ValueError, match="only requirements"):
        requirements.read_requirements(tmp_path / "c.txt")


def _lookups(installed: dict[str, str], requires: dict[str, list[str]]):
    def version(name: str) -> str:
        key = name.lower().replace("_", "-")
        if key not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[key]

    return version, lambda name: requires.get(name.lower())


def test_extras_are_honoured():
    dask_requires = [
        "click>=8.1",
        'distributed==2026.8.0; extra == "distributed"',
        'bokeh>=3.1; extra == "diagnostics"',
    ]
    version, requires = _lookups({"dask": "2026.8.0", "click": "8.2"}, {"dask": dask_requires})
    assert requirements.missing_requirements(["dask>=2024.1"], version, requires) == []
    assert requirements.missing_requirements(["dask[distributed]>=2024.1"], version, requires) == [
        "dask[distributed]>=2024.1"
    ], "dask alone does not satisfy dask[distributed]"
    version, requires = _lookups({"dask": "2026.8.0", "distributed": "2026.8.0"}, {"dask": dask_requires})
    assert requirements.missing_requirements(["dask[distributed]>=2024.1"], version, requires) == []
    assert requirements.missing_requirements(["dask>=2030"], version, requires) == ["dask>=2030"]
    assert requirements.missing_requirements(['pywin32; sys_platform == "win32"'], version, requires) == (
        ['pywin32; sys_platform == "win32"'] if sys.platform == "win32" else []
    )
    # The real environment: the test environment has dask with its distributed extra.
    assert requirements.missing_requirements(["dask[distributed]>=2024.1"]) == []


@pytest.fixture
def harness():
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    import slicer_harness

    return slicer_harness


def _fake_installer(harness):
    """Lookups in which 'pandas' is missing until the stand-in pip installs it."""
    installed = {"numpy": "2.0.2"}

    def version(name: str) -> str:
        installed_now = dict(installed)
        if any(kind == "pip_install" for kind, _ in harness.EVENTS):
            installed_now["pandas"] = "2.3.0"
        if name.lower() not in installed_now:
            raise metadata.PackageNotFoundError(name)
        return installed_now[name.lower()]

    return version, lambda name: []


@pytest.mark.parametrize("release", [(5, 12), (5, 13)])
def test_slicer_5_12_and_later_use_pip_ensure_and_survive_a_decline(harness, release):
    version, requires = _fake_installer(harness)
    with harness.application(release):
        harness.ANSWERS["confirm"] = False
        assert requirements.ensure_requirements(["numpy", "pandas>=2"], "Test", None, version, requires) is False
        assert harness.EVENTS == [("pip_ensure", ["pandas>=2"])], "only the missing one is asked for"
        harness.EVENTS.clear()
        harness.ANSWERS["confirm"] = True
        assert requirements.ensure_requirements(["numpy", "pandas>=2"], "Test", None, version, requires) is True
        assert ("pip_install", ["pandas>=2"]) in harness.EVENTS


def test_slicer_5_10_asks_once_then_uses_pip_install(harness):
    version, requires = _fake_installer(harness)
    with harness.application((5, 10)):
        import slicer

        assert not hasattr(slicer, "packaging"), "Slicer 5.10 has no slicer.packaging"
        assert requirements.ensure_requirements(["pandas>=2"], "Test", None, version, requires) is False
        assert [kind for kind, _ in harness.EVENTS] == ["confirmOkCancelDisplay"]
        assert "pandas>=2" in harness.EVENTS[0][1]
        harness.ANSWERS["confirm"] = True
        assert requirements.ensure_requirements(["pandas>=2"], "Test", None, version, requires) is True
        assert harness.EVENTS[-1] == ("pip_install", ["pandas>=2"])


def test_an_installation_that_does_not_deliver_is_reported(harness):
    version, requires = _lookups({}, {})
    with harness.application((5, 12)):
        harness.ANSWERS["confirm"] = True
        with pytest.raises(RuntimeError, match="still lacks pandas"):
            requirements.ensure_requirements(["pandas"], "Test", None, version, requires)


def test_old_slicer_and_headless_python_get_a_sentence_not_a_traceback(harness):
    version, requires = _lookups({}, {})
    with harness.application((5, 8)), pytest.raises(RuntimeError, match=r"needs 3D Slicer 5\.10 or later"):
        requirements.ensure_requirements(["pandas"], "Test", None, version, requires)
    harness.install()
    with pytest.raises(RuntimeError, match="pip install"):
        requirements.ensure_requirements(["pandas"], "Test", None, version, requires)


# ----------------------------------------------------------------------------------------
# Source, build and install trees


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


def _macro_call(text: str) -> dict[str, str]:
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, re.S).group(1)
    options = {}
    for key in ("TARGET_NAME", "DESTINATION_DIR", "INSTALL_DIR"):
        options[key] = re.search(rf"{key}\s+(\S+)", call).group(1)
    options["NO_INSTALL_SUBDIR"] = "NO_INSTALL_SUBDIR" in call
    return options


def _slicer_layout(root: Path, tree: str) -> Path:
    """Lay the extension out as CTK's macros do in a build or install tree; returns qt-scripted-modules.

    ``ctkMacroCompilePythonScript`` copies SCRIPTS and RESOURCES (paths relative to the
    calling CMakeLists) into DESTINATION_DIR in the build tree, and installs the whole
    DESTINATION_DIR folder into INSTALL_DIR, or only its contents with NO_INSTALL_SUBDIR.
    ``slicerMacroBuildScriptedModule`` puts every module's scripts and resources flat
    into qt-scripted-modules.
    """
    modules_dir = root / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    package = REPOSITORY / "ImagInfoExtension"
    text = (package / "CMakeLists.txt").read_text()
    call = _macro_call(text)
    destination = call["DESTINATION_DIR"].replace("${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}", "")
    install = call["INSTALL_DIR"].replace("${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}", "")
    build_dir = modules_dir / destination.strip("/")
    if tree == "build":
        target = build_dir
    elif call["NO_INSTALL_SUBDIR"]:
        target = modules_dir / install.strip("/")
    else:
        target = modules_dir / install.strip("/") / Path(destination).name
    for relative in _cmake_list(text, "IMAGINFO_PYTHON_SCRIPTS") + _cmake_list(text, "IMAGINFO_PYTHON_RESOURCES"):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / relative, target / relative)
    for module in MODULES:
        source = REPOSITORY / "Modules" / "Scripted" / module
        shutil.copy2(source / f"{module}.py", modules_dir / f"{module}.py")
        for path in (source / "Resources").rglob("*"):
            if path.is_file():
                (modules_dir / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, modules_dir / path.relative_to(source))
    return modules_dir


@pytest.mark.parametrize("tree", ["source", "build", "install"])
def test_the_package_and_its_requirement_lists_are_found_in_every_tree(tmp_path, tree):
    path_entry = REPOSITORY if tree == "source" else _slicer_layout(tmp_path, tree)
    script = (
        "import json, ImagInfoExtension\n"
        "from ImagInfoExtension.bridge.requirements import module_requirements\n"
        f"print(json.dumps({{'package': ImagInfoExtension.__file__, "
        f"'lists': {{m: module_requirements(m) for m in {MODULES!r}}}}}))\n"
    )
    environment = {"PYTHONPATH": str(path_entry), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout)
    assert Path(found["package"]) == path_entry / "ImagInfoExtension" / "__init__.py", (
        "import ImagInfoExtension finds the package directly in qt-scripted-modules, not one folder deeper"
    )
    for module in MODULES:
        assert found["lists"][module] == requirements.module_requirements(module)
