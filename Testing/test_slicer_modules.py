"""Consistency of every Slicer module under Modules/Scripted: UI, parameters, packaging.

These tests discover modules, so every module added later is checked too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
MODULES = sorted(p for p in (REPOSITORY / "Modules" / "Scripted").glob("*") if (p / "CMakeLists.txt").is_file())
MODULE_IDS = [p.name for p in MODULES]


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


def test_top_level_cmake_adds_every_module():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    for field in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({field}\s", cmake), field
    assert re.search(r"set\(EXTENSION_DEPENDS\s+PyTorch\s+SlicerRadiomics\)", cmake)
    assert "find_package(Slicer REQUIRED)" in cmake
    added = re.findall(r"add_subdirectory\(Modules/Scripted/(\w+)\)", cmake)
    assert sorted(added) == MODULE_IDS


def test_core_package_files_are_installed():
    """Every core .py (and data file) is listed in ImagInfoExtension/CMakeLists.txt, and the reverse."""
    package = REPOSITORY / "ImagInfoExtension"
    text = (package / "CMakeLists.txt").read_text()
    listed = set(_cmake_list(text, "IMAGINFO_PYTHON_SCRIPTS")) | set(_cmake_list(text, "IMAGINFO_PYTHON_RESOURCES"))
    present = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.suffix in (".py", ".csv") and "__pycache__" not in p.parts
    }
    assert listed == present


def test_extension_catalog_entry():
    import json

    entry = json.loads((REPOSITORY / "ImagInfo.json").read_text())
    assert "slicer-extension-catalog-entry-schema-v1.0.1.json" in entry["$schema"]
    assert entry["category"] == "Quantification"
    assert entry["build_dependencies"] == ["PyTorch", "SlicerRadiomics"]


@pytest.mark.parametrize("module_dir", MODULES, ids=MODULE_IDS)
def test_module_packaging(module_dir):
    text = (module_dir / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule" in text
    scripts = [s.replace("${MODULE_NAME}", module_dir.name) for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", module_dir.name) for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    listed = {
        Path(s if s.endswith((".py", ".ui", ".png", ".svg", ".json")) else s + ".py").as_posix()
        for s in scripts + resources
    }
    for entry in listed:
        assert (module_dir / entry).is_file(), f"{entry} is listed in CMakeLists.txt but missing"
    present = {
        p.relative_to(module_dir).as_posix()
        for p in module_dir.rglob("*")
        if p.suffix in (".py", ".ui", ".png", ".svg") and "__pycache__" not in p.parts and "Testing" not in p.parts
    }
    assert present <= listed, f"not listed in CMakeLists.txt: {sorted(present - listed)}"
    assert (module_dir / "Resources" / "Icons" / f"{module_dir.name}.png").is_file()


def _ui_widget_names(ui_path: Path) -> tuple[set[str], dict[str, str]]:
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(ui_path).getroot()
    names, parameters = set(), {}
    for widget in root.iter("widget"):
        names.add(widget.get("name"))
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameters[widget.get("name")] = prop.find("string").text
    return names, parameters


def _load_module_source(module_dir: Path):
    import slicer_harness

    slicer_harness.install()
    path = module_dir / f"{module_dir.name}.py"
    spec = importlib.util.spec_from_file_location(module_dir.name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_dir.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module_dir", MODULES, ids=MODULE_IDS)
def test_module_ui_is_consistent(module_dir):
    pytest.importorskip("PySide6", reason="UI checks need PySide6 (pip install imaginfo[test])")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    ui_path = module_dir / "Resources" / "UI" / f"{module_dir.name}.ui"
    assert ui_path.is_file()
    app = QApplication.instance() or QApplication([])
    loader = QUiLoader()
    handle = QFile(str(ui_path))
    assert handle.open(QFile.ReadOnly)
    widget = loader.load(handle)  # unknown Slicer/CTK classes fall back to their base class
    handle.close()
    assert widget is not None, loader.errorString()
    del app

    names, parameters = _ui_widget_names(ui_path)
    source = (module_dir / f"{module_dir.name}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used <= names, f"widgets used but absent from the .ui: {sorted(used - names)}"

    module = _load_module_source(module_dir)
    wrappers = [v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "allParameters")]
    assert len(wrappers) == 1, "one parameterNodeWrapper class per module"
    fields = set(wrappers[0].allParameters)
    assert set(parameters.values()) == fields, (
        f"SlicerParameterName without a field: {sorted(set(parameters.values()) - fields)}; "
        f"fields without a widget: {sorted(fields - set(parameters.values()))}"
    )
    tree = ast.parse(source)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test"):
        assert f"{module_dir.name}{suffix}" in classes
