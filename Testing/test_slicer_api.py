"""Every call our code makes into Slicer's Python API exists, with those keywords, in every supported release.

``../shared/reference/slicer/slicer_python_api.json`` lists the public functions and
classes of ``slicer.util``, ``slicer.packaging``, ``slicer.i18n``,
``ScriptedLoadableModule``, ``parameterNodeWrapper`` and ``SampleData`` in Slicer
5.10.0, 5.12.3 and the main branch, with their parameters. This test reads the
bridge and the modules' sources, finds each call into those APIs (directly, through
names the scaffolding re-exports, as ``self.``/``super().`` methods inherited from
Slicer's classes, and explicit ``Base.method(self, ...)`` calls), and checks it against
each release. A call inside ``if slicer_version_at_least(major, minor):`` is checked
only against the releases that branch runs on.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
API_FILE = REPOSITORY.parent / "shared" / "reference" / "slicer" / "slicer_python_api.json"
SOURCES = sorted((REPOSITORY / "ImagInfoExtension" / "bridge").glob("*.py")) + sorted(
    (REPOSITORY / "Modules" / "Scripted").glob("*/*.py")
)

#: Release tags of the API file and the version each stands for.
RELEASES = {"v5.10.0": (5, 10), "v5.12.3": (5, 12), "HEAD": (5, 13)}

#: Python module -> API file(s) in the reference.
API_MODULES = {
    "slicer.util": ["Base/Python/slicer/util.py"],
    "slicer.packaging": ["Base/Python/slicer/packaging.py"],
    "slicer.i18n": ["Base/Python/slicer/i18n.py"],
    "slicer.ScriptedLoadableModule": ["Base/Python/slicer/ScriptedLoadableModule.py"],
    "slicer.parameterNodeWrapper": [
        f"Base/Python/slicer/parameterNodeWrapper/{name}.py"
        for name in ("__init__", "default", "guiConnectors", "parameterPack", "serializers", "types")
        + ("validators", "wrapper")
    ],
    "SampleData": ["Modules/Scripted/SampleData/SampleData.py"],
}


@pytest.fixture(scope="module")
def api():
    if not API_FILE.is_file():
        pytest.skip(f"{API_FILE} is absent: Slicer's API facts live in ../shared/reference/slicer")
    return json.loads(API_FILE.read_text())["versions"]


@dataclass
class Call:
    where: str
    module: str
    path: tuple[str, ...]  # e.g. ("SampleDataLogic", "registerCustomSampleDataSource")
    positional: int
    keywords: list[str]
    bound: bool  # called on an instance (self dropped) rather than as Base.method(self, ...)
    starred: bool
    alternatives: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # further bases, in MRO order
    since: tuple[int, int] = (0, 0)
    before: tuple[int, int] = (99, 0)


@dataclass
class Checker:
    """Collects calls into Slicer's API from sources, then checks them against releases."""

    calls: list[Call] = field(default_factory=list)
    modules_used: list[tuple[str, str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    classes: dict[str, tuple[list[str], set[str]]] = field(default_factory=dict)  # ours: bases, methods
    reexports: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    # Collecting -------------------------------------------------------------------

    def scan(self, sources: list[tuple[str, str]]) -> Checker:
        trees = [(name, ast.parse(text)) for name, text in sources]
        for name, tree in trees:
            if name.endswith("scaffolding.py"):
                self.reexports = self._bindings(tree)
        for _, tree in trees:
            names = self._bindings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    # A base is a Slicer class (API module, class) or one of ours (its name).
                    bases = [
                        names[b] if b in names and names[b][1] else b for b in (ast.unparse(b) for b in node.bases)
                    ]
                    methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                    # Class attributes, and attributes our code sets on self (callables it stores).
                    methods |= {
                        target.id
                        for n in node.body
                        if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
                        if isinstance(target, ast.Name)
                    }
                    methods |= {
                        n.attr
                        for n in ast.walk(node)
                        if isinstance(n, ast.Attribute)
                        and isinstance(n.ctx, ast.Store)
                        and isinstance(n.value, ast.Name)
                        and n.value.id == "self"
                    }
                    self.classes[node.name] = (bases, methods)
        for name, tree in trees:
            self._collect(name, tree)
        return self

    def _bindings(self, tree: ast.Module) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Local name -> (API module, path) for names bound by imports (anywhere in the file)
        and by ``import_slicer()``, the bridge's guarded ``import slicer``."""
        bound: dict[str, tuple[str, tuple[str, ...]]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    if node.module in API_MODULES:
                        bound[local] = (node.module, (alias.name,))
                    elif node.module == "slicer" and f"slicer.{alias.name}" in API_MODULES:
                        bound[local] = (f"slicer.{alias.name}", ())
                    elif node.module.endswith("bridge.scaffolding") and alias.name in self.reexports:
                        bound[local] = self.reexports[alias.name]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in API_MODULES:
                        bound[alias.asname] = (alias.name, ())
                    elif alias.name.split(".")[0] == "slicer":
                        bound["slicer"] = ("slicer", ())
                    elif alias.name in API_MODULES:
                        bound[alias.name] = (alias.name, ())
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                targets, values = node.targets[0], node.value
                pairs = (
                    zip(targets.elts, values.elts)
                    if isinstance(targets, ast.Tuple) and isinstance(values, ast.Tuple)
                    else [(targets, values)]
                )
                for target, value in pairs:
                    if (
                        isinstance(target, ast.Name)
                        and isinstance(value, ast.Call)
                        and ast.unparse(value.func) == "import_slicer"
                    ):
                        bound[target.id] = ("slicer", ())
        return bound

    def _slicer_bases(self, class_name: str, seen: set[str] | None = None) -> list[tuple[str, str]]:
        """The Slicer classes a class derives from, nearest first: (API module, class)."""
        seen = set() if seen is None else seen
        if class_name in seen or class_name not in self.classes:
            return []
        seen.add(class_name)
        found = []
        for base in self.classes[class_name][0]:
            if isinstance(base, tuple):
                found.append((base[0], base[1][0]))
            else:
                found += self._slicer_bases(base, seen)
        return found

    def _defined_by_us(self, class_name: str, method: str, seen: set[str] | None = None) -> bool:
        seen = set() if seen is None else seen
        if class_name in seen or class_name not in self.classes:
            return False
        seen.add(class_name)
        bases, methods = self.classes[class_name]
        return method in methods or any(self._defined_by_us(b, method, seen) for b in bases if isinstance(b, str))

    def _collect(self, where: str, tree: ast.Module) -> None:
        self._names = self._bindings(tree)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in API_MODULES:
                        since, before = self._guards(node, parents)
                        self.modules_used.append((where, alias.name, since, before))
            if not isinstance(node, ast.Call):
                continue
            target = self._resolve(node, parents)
            if target is None:
                continue
            module, path, bound, alternatives = target
            since, before = self._guards(node, parents)
            self.calls.append(
                Call(
                    where=f"{Path(where).name}:{node.lineno}",
                    module=module,
                    path=path,
                    alternatives=alternatives,
                    positional=len([a for a in node.args if not isinstance(a, ast.Starred)]),
                    keywords=[k.arg for k in node.keywords if k.arg is not None],
                    bound=bound,
                    starred=any(isinstance(a, ast.Starred) for a in node.args)
                    or any(k.arg is None for k in node.keywords),
                    since=since,
                    before=before,
                )
            )

    def _enclosing_class(self, node: ast.AST, parents: dict) -> str | None:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.ClassDef):
                return node.name
        return None

    def _resolve(self, call: ast.Call, parents: dict):
        """(API module, path, bound, alternatives) of a call into Slicer's API, or None."""
        function = call.func
        chain: list[str] = []
        while isinstance(function, ast.Attribute):
            chain.insert(0, function.attr)
            function = function.value
        if isinstance(function, ast.Call) and isinstance(function.func, ast.Name) and function.func.id == "super":
            return self._inherited(self._enclosing_class(call, parents), chain, parents, call)
        if isinstance(function, ast.Call) and ast.unparse(function.func) == "import_slicer":
            head = "slicer"
        elif isinstance(function, ast.Name):
            head = function.id
        else:
            return None
        if head == "self" and len(chain) == 1:
            return self._inherited(self._enclosing_class(call, parents), chain, parents, call)
        if head not in self._names and head != "slicer":
            return None
        module, path = self._names.get(head, ("slicer", ()))
        if module == "slicer":
            # slicer.util.X, slicer.packaging.X, ...
            for depth in range(len(chain), 0, -1):
                candidate = "slicer." + ".".join(chain[: depth - 1]) if depth > 1 else None
                if candidate in API_MODULES:
                    return candidate, tuple(chain[depth - 1 :]), True, []
            return None
        if module not in API_MODULES:
            return None
        full = (*path, *chain)
        if not full:
            return None
        # Base.method(self, ...) passes self explicitly.
        explicit_self = (
            len(full) == 2 and call.args and isinstance(call.args[0], ast.Name) and call.args[0].id == "self"
        )
        return module, full, not explicit_self, []

    def _inherited(self, class_name, chain, parents, call):
        """A method our class inherits from Slicer's classes: every Slicer base, nearest first."""
        if class_name is None or len(chain) != 1 or self._defined_by_us_excluding(class_name, chain[0], call):
            return None
        bases = [(module, (base, chain[0])) for module, base in self._slicer_bases(class_name)]
        if not bases:
            return None
        (module, path), *others = bases
        return module, path, True, others

    def _defined_by_us_excluding(self, class_name: str, method: str, call: ast.Call) -> bool:
        # super().m() inside our m() refers to the base's m, even though we define m.
        is_super = isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Call)
        if is_super:
            bases = self.classes.get(class_name, ([], set()))[0]
            return any(self._defined_by_us(b, method) for b in bases if isinstance(b, str))
        return self._defined_by_us(class_name, method)

    @staticmethod
    def _guards(node: ast.AST, parents: dict) -> tuple[tuple[int, int], tuple[int, int]]:
        since, before = (0, 0), (99, 0)
        child = node
        while child in parents:
            parent = parents[child]
            if isinstance(parent, ast.If):
                test = parent.test
                version = None
                if isinstance(test, ast.Call) and ast.unparse(test.func).endswith("slicer_version_at_least"):
                    version = tuple(a.value for a in test.args)
                if version is not None:
                    if child in parent.body:
                        since = max(since, version)
                    elif child in parent.orelse:
                        before = min(before, version)
            child = parent
        return since, before

    # Checking ---------------------------------------------------------------------

    @staticmethod
    def _lookup(api_release: dict, module: str, path: tuple[str, ...]) -> dict | None:
        for file in API_MODULES[module]:
            entry = api_release["api"].get(file, {}).get(path[0])
            if entry is None:
                continue
            if len(path) == 1:
                return entry
            if entry.get("kind") == "class":
                return entry["methods"].get(path[1])
        return None

    def problems(self, api: dict) -> list[str]:
        found = []
        for where, module, since, before in self.modules_used:
            for release, version in RELEASES.items():
                if since <= version < before and not any(f in api[release]["api"] for f in API_MODULES[module]):
                    found.append(f"{where}: imports {module}, which Slicer {release} lacks (guard it)")
        for call in self.calls:
            for release, version in RELEASES.items():
                if not call.since <= version < call.before:
                    continue
                entry, name = None, f"{call.module}.{'.'.join(call.path)}"
                for module, path in [(call.module, call.path), *call.alternatives]:
                    entry = self._lookup(api[release], module, path)
                    if entry is not None:
                        break
                if entry is None:
                    found.append(f"{call.where}: {name} does not exist in Slicer {release}")
                    continue
                if entry.get("kind") == "class":
                    entry = entry["methods"].get("__init__", {"params": ["self"], "required": []})
                    bound = True
                else:
                    bound = call.bound
                params = list(entry["params"])
                static = "staticmethod" in entry.get("decorators", [])
                if params and params[0] in ("self", "cls") and bound and not static:
                    params = params[1:]
                required = [p for p in entry["required"] if p in params]
                for keyword in call.keywords:
                    if keyword not in params and not entry.get("kwargs"):
                        found.append(f"{call.where}: {name} has no parameter {keyword!r} in Slicer {release}")
                if call.starred:
                    continue
                if call.positional > len(params) and not entry.get("varargs"):
                    found.append(f"{call.where}: {name} takes {len(params)} positional arguments in Slicer {release}")
                given = set(params[: call.positional]) | set(call.keywords)
                for parameter in required:
                    if parameter not in given:
                        found.append(f"{call.where}: {name} needs {parameter!r} in Slicer {release}")
        return found


def _checker_for(paths: list[Path]) -> Checker:
    return Checker().scan([(str(p), p.read_text()) for p in paths])


def test_every_call_into_slicer_exists_in_every_supported_release(api):
    checker = _checker_for(SOURCES)
    assert checker.problems(api) == []
    checked = {f"{m}.{'.'.join(p)}" for c in checker.calls for m, p in [(c.module, c.path), *c.alternatives]}
    # The checker must actually see the calls that matter (it cannot pass by finding nothing).
    for expected in (
        "SampleData.SampleDataLogic.registerCustomSampleDataSource",
        "slicer.packaging.pip_ensure",
        "slicer.util.pip_install",
        "slicer.util.loadUI",
        "slicer.util.tryWithErrorDisplay",
        "slicer.util.startupEnvironment",
        "slicer.parameterNodeWrapper.WithinRange",
        "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget.setup",
        "slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic.getParameterNode",
        "slicer.util.VTKObservationMixin.addObserver",
        "slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest.delayDisplay",
    ):
        assert expected in checked, f"{expected} was not found among the checked calls"
    assert len(checker.calls) >= 40


def test_the_checker_catches_the_calls_that_broke_real_slicers(api, tmp_path):
    """The two errors a review found: a keyword that never existed, and one that exists only from 5.12."""
    source = tmp_path / "old_module.py"
    source.write_text(
        "import SampleData\n"
        "import slicer\n"
        "def registerSampleData():\n"
        "    SampleData.SampleDataLogic.registerCustomSampleDataSource(\n"
        "        category='ImagInfo', sampleName='x', sampleDescription='y', uris=[], fileNames=[])\n"
        "def run(arguments):\n"
        "    return slicer.util.launchConsoleProcess(arguments, blocking=False)\n"
        "def install():\n"
        "    import slicer.packaging\n"
        "    slicer.packaging.pip_ensure(['pandas'], requester='ImagInfo')\n"
    )
    problems = "\n".join(_checker_for([source]).problems(api))
    assert "has no parameter 'sampleDescription' in Slicer v5.10.0" in problems
    assert "has no parameter 'blocking' in Slicer v5.10.0" in problems
    assert "has no parameter 'blocking' in Slicer v5.12.3" not in problems
    assert "imports slicer.packaging, which Slicer v5.10.0 lacks" in problems
    guarded = tmp_path / "guarded.py"
    guarded.write_text(
        "import slicer\n"
        "from ImagInfoExtension.bridge.compat import slicer_version_at_least\n"
        "def run(arguments):\n"
        "    if slicer_version_at_least(5, 12):\n"
        "        import slicer.packaging\n"
        "        slicer.packaging.pip_ensure(['pandas'], requester='ImagInfo')\n"
        "        return slicer.util.launchConsoleProcess(arguments, blocking=False)\n"
        "    return slicer.util.launchConsoleProcess(arguments)\n"
    )
    assert _checker_for([guarded]).problems(api) == []
