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
    assert "find_package(Slicer REQUIRED)" in cmake
    assert re.search(r'VERSION_LESS "5\.10"\)\s*message\(FATAL_ERROR', cmake), "Slicer < 5.10 stops the build"
    added = re.findall(r"add_subdirectory\(Modules/Scripted/(\w+)\)", cmake)
    assert sorted(added) == MODULE_IDS


def _extension_depends() -> list[str]:
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    depends = re.search(r"set\(EXTENSION_DEPENDS\s+([^)]*)\)", cmake).group(1).replace('"', "").split()
    return [] if depends == ["NA"] else depends


def test_extension_depends_only_on_what_the_code_uses():
    """SlicerRadiomics is missing on macOS and nothing uses PyTorch yet: no dependency until one is used everywhere."""
    uses = {
        "PyTorch": r"PyTorchUtils",
        "SlicerRadiomics": r"^\s*(import|from) radiomics",
    }
    sources = [
        p.read_text() for p in [*REPOSITORY.glob("ImagInfoExtension/**/*.py"), *REPOSITORY.glob("Modules/**/*.py")]
    ]
    for extension in _extension_depends():
        pattern = uses.get(extension)
        assert pattern and any(re.search(pattern, text, re.M) for text in sources), f"{extension} is not used"


def test_extension_description_names_only_what_exists():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]*)"\)', cmake).group(1)
    assert "5.10 or later" in description
    for word, module in (("radiomics", "ImagInfoRadiomics"), ("segmentation", "ImagInfoSegmentation")):
        assert (word in description.lower()) == (module in MODULE_IDS), f"{word!r} in the description vs {module}"
    for module in MODULE_IDS:
        title = re.search(
            r'_\("(ImagInfo [^"]+)"\)', (REPOSITORY / "Modules/Scripted" / module / f"{module}.py").read_text()
        )
        assert title.group(1) in description


def test_core_package_files_are_installed():
    """Every core .py (and data file) is listed in ImagInfoExtension/CMakeLists.txt, and the reverse."""
    package = REPOSITORY / "ImagInfoExtension"
    text = (package / "CMakeLists.txt").read_text()
    listed = set(_cmake_list(text, "IMAGINFO_PYTHON_SCRIPTS")) | set(_cmake_list(text, "IMAGINFO_PYTHON_RESOURCES"))
    present = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.suffix in (".py", ".csv", ".txt") and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }
    assert listed == present


def test_extension_catalog_entry():
    import json

    entry = json.loads((REPOSITORY / "ImagInfo.json").read_text())
    assert "slicer-extension-catalog-entry-schema-v1.0.1.json" in entry["$schema"]
    assert entry["category"] == "Quantification"
    assert entry["build_dependencies"] == _extension_depends(), "the catalog entry matches EXTENSION_DEPENDS"


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
    used = set(re.findall(r"self\.ui\.(\w+)", source)) | set(re.findall(r"self\.ui\.(\w+)", SCAFFOLDING.read_text()))
    assert used <= names, f"widgets used (by the module or the shared widget) but absent from the .ui: {used - names}"

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


SCAFFOLDING = REPOSITORY / "ImagInfoExtension" / "bridge" / "scaffolding.py"


def _ui_widgets(ui_path: Path) -> list[tuple[str, str, dict]]:
    """(class, name, properties) of every widget in a .ui file."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(ui_path).getroot()
    found = []
    for widget in root.iter("widget"):
        properties = {}
        for prop in widget.findall("property"):
            value = prop[0]
            properties[prop.get("name")] = value.text if value.tag == "string" else value.tag
        found.append((widget.get("class"), widget.get("name"), properties))
    return found


@pytest.mark.parametrize("module_dir", MODULES, ids=MODULE_IDS)
def test_every_mrml_widget_gets_the_scene(module_dir):
    """Slicer's template connects mrmlSceneChanged to setMRMLScene for each qMRML widget (else it stays disabled)."""
    import xml.etree.ElementTree as ElementTree

    ui_path = module_dir / "Resources" / "UI" / f"{module_dir.name}.ui"
    root = ElementTree.parse(ui_path).getroot()
    top = root.find("widget").get("name")
    connected = {
        c.find("receiver").text
        for c in root.iter("connection")
        if c.find("sender").text == top
        and c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {name for kind, name, _ in _ui_widgets(ui_path) if kind.startswith("qMRML") and name != top}
    assert mrml_widgets and mrml_widgets <= connected, f"no scene for: {sorted(mrml_widgets - connected)}"


#: Which widget classes Slicer's parameterNodeWrapper can bind to each parameter type
#: (its GuiConnectors check the exact widget class).
_CONNECTABLE = {
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "choice": {"QComboBox", "ctkComboBox"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "ctkCheckablePushButton"},
    "node": {"qMRMLNodeComboBox"},
}


@pytest.mark.parametrize("module_dir", MODULES, ids=MODULE_IDS)
def test_each_parameter_has_a_widget_slicer_can_bind(module_dir):
    import pathlib
    import typing

    module = _load_module_source(module_dir)
    wrapper = next(v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "allParameters"))
    ui_path = module_dir / "Resources" / "UI" / f"{module_dir.name}.ui"
    bound = {
        props["SlicerParameterName"]: kind for kind, _, props in _ui_widgets(ui_path) if "SlicerParameterName" in props
    }
    import slicer

    for name, (kind, metadata) in wrapper.allParameters.items():
        if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
            category = "node"
        elif isinstance(kind, type) and issubclass(kind, pathlib.PurePath):
            category = "Path"
        elif kind is str and any(type(m).__name__ == "Choice" for m in metadata):
            category = "choice"
        else:
            category = kind.__name__
        assert bound[name] in _CONNECTABLE[category], f"{name} ({category}) is bound to a {bound[name]}"
        if category == "str":
            assert not re.search(r"(file|folder|path|dir)$", name, re.I), f"{name} names a path: make it a Path"
    assert typing  # the annotations above come from typing.Annotated


def _imports(path: Path, at_load: bool = False) -> set[str]:
    """Top-level packages a file imports (anywhere, or only ``at_load``: its module-level statements)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body if at_load else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_bridge_imports_slicer_qt_ctk_or_vtk():
    bridge = REPOSITORY / "ImagInfoExtension" / "bridge"
    sources = [p for p in (REPOSITORY / "ImagInfoExtension").rglob("*.py") if bridge not in p.parents]
    sources += list((REPOSITORY / "Modules").rglob("*.py"))
    offenders = {
        str(p.relative_to(REPOSITORY)): sorted(_imports(p) & {"slicer", "qt", "ctk", "vtk", "SampleData"})
        for p in sources
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_module_works_on_a_python_thread():
    """Slicer does not enable PythonQt's thread support: jobs run as child processes instead."""
    bridge = REPOSITORY / "ImagInfoExtension" / "bridge"
    for path in [*bridge.glob("*.py"), *(REPOSITORY / "Modules").rglob("*.py")]:
        assert not _imports(path) & {"threading", "concurrent"}, f"{path.name} uses threads"


#: Files an old Slicer (5.8, Python 3.9) imports before it can say it is too old.
PYTHON_39_FILES = [
    REPOSITORY / "ImagInfoExtension" / "__init__.py",
    REPOSITORY / "ImagInfoExtension" / "bridge" / "__init__.py",
    REPOSITORY / "ImagInfoExtension" / "bridge" / "compat.py",
    REPOSITORY / "ImagInfoExtension" / "bridge" / "sampledata.py",
    REPOSITORY / "ImagInfoExtension" / "bridge" / "pointlists.py",
    SCAFFOLDING,
    *[m / f"{m.name}.py" for m in MODULES],
]


@pytest.mark.parametrize("path", PYTHON_39_FILES, ids=lambda p: p.name)
def test_what_an_old_slicer_imports_is_python_39(path):
    tree = ast.parse(path.read_text(), feature_version=(3, 9))
    imported = _imports(path, at_load=True)
    assert not imported & {"pandas", "numpy", "SimpleITK", "scipy"}, f"{path.name} imports {imported} at load time"
    if path.name not in ("__init__.py",):
        assert (
            any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
            or path.parent.parent.name == "Scripted"
        ), f"{path.name} needs `from __future__ import annotations`"
