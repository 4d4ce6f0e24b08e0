"""The smallest stand-in for what slicer-core lacks, so module Logic runs under pytest.

slicer-core gives real MRML but not the scripted-module base classes, the typed
parameter-node wrapper or Slicer's translation helpers. This module supplies those
three, registered as ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``
and ``slicer.i18n``, plus a real ``slicer.mrmlScene``. Widgets are not covered: they
need Qt and the Slicer application.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Annotated, Any, get_args, get_origin, get_type_hints


def _scripted_loadable_module(slicer: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        """Parameter-node handling as in Slicer: one singleton node per module."""

        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self) -> Any:
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetName(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest:
        def setUp(self) -> None:
            slicer.mrmlScene.Clear(0)

        def delayDisplay(self, message: str, msec: int = 0) -> None:
            print(message)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    module.__all__ = [n for n in vars(module) if n.startswith("Scripted")]
    return module


def _parameter_node_wrapper(slicer: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class WithinRange:
        def __init__(self, minimum: float, maximum: float) -> None:
            self.minimum, self.maximum = minimum, maximum

    class Default:
        def __init__(self, value: Any) -> None:
            self.value = value

    class Choice:
        def __init__(self, choices: typing.Sequence[Any]) -> None:
            self.choices = list(choices)

    def _base_type(hint: Any) -> tuple[Any, list[Any]]:
        metadata: list[Any] = []
        if get_origin(hint) is Annotated:
            hint, *metadata = get_args(hint)
        if get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
        return hint, metadata

    def parameterNodeWrapper(cls: type) -> type:
        """Typed fields stored in a vtkMRMLScriptedModuleNode (values as parameters,
        MRML nodes as references), as Slicer's wrapper does."""
        hints = get_type_hints(cls, include_extras=True)
        fields = {name: _base_type(hint) for name, hint in hints.items()}

        def __init__(self: Any, parameterNode: Any) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            for name, (kind, metadata) in fields.items():
                if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                    continue
                if parameterNode.GetParameter(name) == "":
                    default = next((m.value for m in metadata if isinstance(m, Default)), getattr(cls, name, None))
                    if default is None:
                        default = kind() if kind in (int, float, bool, str) else None
                    if default is not None:
                        setattr(self, name, default)

        def __getattr__(self: Any, name: str) -> Any:
            if name not in fields:
                raise AttributeError(name)
            kind, _ = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if kind is bool:
                return text == "true"
            return kind(text) if kind in (int, float) else text

        def __setattr__(self: Any, name: str, value: Any) -> None:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            kind, metadata = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            for rule in metadata:
                if isinstance(rule, WithinRange) and not rule.minimum <= value <= rule.maximum:
                    raise ValueError(f"{name}={value} is outside [{rule.minimum}, {rule.maximum}]")
                if isinstance(rule, Choice) and value not in rule.choices:
                    raise ValueError(f"{name}={value!r} is not one of {rule.choices}")
            node.SetParameter(name, ("true" if value else "false") if kind is bool else str(value))

        namespace = {
            "__init__": __init__,
            "__getattr__": __getattr__,
            "__setattr__": __setattr__,
            "allParameters": dict(fields),
            "__doc__": cls.__doc__,
        }
        return type(cls.__name__, (), namespace)

    module.parameterNodeWrapper = parameterNodeWrapper
    module.WithinRange = WithinRange
    module.Default = Default
    module.Choice = Choice
    return module


def _i18n() -> types.ModuleType:
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


def install() -> Any:
    """Register the stand-ins and a fresh ``slicer.mrmlScene``; returns ``slicer``."""
    import slicer

    for name, module in (
        ("ScriptedLoadableModule", _scripted_loadable_module(slicer)),
        ("parameterNodeWrapper", _parameter_node_wrapper(slicer)),
        ("i18n", _i18n()),
    ):
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer
