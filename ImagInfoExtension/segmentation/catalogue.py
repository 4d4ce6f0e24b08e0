"""The model catalogue: one validated entry per model version.

An entry says everything needed to run a model reproducibly: what it segments,
how its input is prepared, which network it is, how the sliding window runs, how
its output becomes labels, what the labels mean, where its weights come from and
what they hash to, and what a run costs. ``Resources/models.json`` holds the
entries we ship; ``Resources/models.schema.json`` is their JSON schema (draft
2020-12), which states the same keys, types, choices and patterns as
:func:`entry_from_json`. The few rules a JSON schema cannot state (``clip_min <
clip_max``, distinct label values, thresholds and largest-component labels that
name the entry's labels) are checked here only.

Models the user imports (:mod:`ImagInfoExtension.segmentation.bundle`) live in the
user catalogue ``<cache>/catalogue.json`` beside their weights, with the same
layout. :func:`load_catalogue` reads both.

This module imports neither torch nor MONAI, so the Slicer module and the study
plugin can list models on a Slicer that has neither yet.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Every catalogue file states this schema version.
SCHEMA_VERSION = 1
NETWORK_FORMATS = ("monai", "torchscript")
WEIGHT_FORMATS = ("state_dict", "safetensors", "torchscript")
NORMALISATIONS = ("range", "zscore", "fixed", "none")
ACTIVATIONS = ("softmax", "sigmoid", "none")
DECISIONS = ("argmax", "thresholds")
BLEND_MODES = ("gaussian", "constant")
#: Padding modes of MONAI's ``sliding_window_inference`` (those of ``torch.nn.functional.pad``).
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
#: Keys of a label's DICOM terminology; each names a code ``{"scheme", "code", "meaning"}``.
TERMINOLOGY_KEYS = ("category", "type", "type_modifier", "anatomic_region", "anatomic_region_modifier")
#: Devices whose memory and time a catalogue entry may state.
REQUIREMENT_DEVICES = ("cpu", "gpu")
#: File names of the shipped catalogue, its schema and the user catalogue.
CATALOGUE_FILE = "models.json"
SCHEMA_FILE = "models.schema.json"
USER_CATALOGUE_FILE = "catalogue.json"

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL = re.compile(r"^(https?|file)://")
_LABEL_KEY = re.compile(r"^[1-9][0-9]*$")
#: Semantic versioning 2.0.0 (https://semver.org), as the schema states it.
_SEMVER = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class CatalogueError(ValueError):
    """A catalogue entry that cannot be used as written; the message names the entry, the key and the fix."""


def semantic_version_key(version: str) -> tuple:
    """Sort key of a semantic version (https://semver.org precedence; build metadata breaks ties only).

    Raises
    ------
    CatalogueError
        When ``version`` is not ``MAJOR.MINOR.PATCH[-pre-release][+build]``.
    """
    match = _SEMVER.match(version)
    if match is None:
        raise CatalogueError(f"version {version!r} is not a semantic version MAJOR.MINOR.PATCH such as '1.0.0'")
    major, minor, patch, pre, build = match.groups()
    # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric ones.
    pre_key = (1,) if pre is None else (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return int(major), int(minor), int(patch), pre_key, build or ""


def _relative_path(value: str) -> bool:
    """Whether ``value`` is a relative path with '/' that stays inside its folder (no '.', '..', '\\' or ':')."""
    if not value or value.startswith("/") or "\\" in value or ":" in value:
        return False
    return not any(part in (".", "..") for part in value.split("/"))


class _Reader:
    """Reads one JSON object, naming the entry and key in every error."""

    def __init__(self, data: object, where: str, keys: Sequence[str] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise CatalogueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.where = where
        if keys is not None:
            self.only(keys)

    def only(self, keys: Sequence[str]) -> None:
        """Refuse keys the catalogue does not know: a misspelt key would otherwise be ignored silently."""
        for key in self.data:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(keys)}"
                raise self.fail(str(key), f"is not a key of this section; {hint}")

    def fail(self, key: str, problem: str) -> CatalogueError:
        return CatalogueError(f"{self.where}: '{key}' {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., optional: bool = False) -> Any:
        if key not in self.data or (optional and self.data[key] is None):
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema's 'integer' takes 2.0 too
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"must be {getattr(kind, '__name__', kind)}, got a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {type(value).__name__}")
        return value

    def text(self, key: str, default: Any = ...) -> str:
        """A string that must not be empty when given."""
        value = self.get(key, str, default)
        if not value and default is ...:
            raise self.fail(key, "must not be empty")
        return value

    def choice(self, key: str, choices: Sequence[str], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"is {value!r}; choose one of {', '.join(choices)}")
        return value

    def numbers(self, key: str, count: int, kind: type = float, default: Any = ..., positive: bool = True) -> Any:
        value = self.get(key, list, default, optional=default is not ...)
        if value is None or value is default:
            return value
        if len(value) != count or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise self.fail(key, f"must be a list of {count} numbers, got {value!r}")
        if kind is int and not all(float(v).is_integer() for v in value):
            raise self.fail(key, f"must be whole numbers, got {value!r}")
        if positive and min(value) <= 0:
            raise self.fail(key, f"must be positive, got {value!r}")
        return tuple(kind(v) for v in value)

    def child(self, key: str, default: Any = ..., keys: Sequence[str] | None = None) -> _Reader:
        value = self.get(key, dict, default)
        return _Reader(value, f"{self.where}.{key}", keys)


@dataclass(frozen=True)
class IntensityPreprocessing:
    """Intensity window and scaling (see :func:`ImagInfoExtension.segmentation.space.normalise_intensity`)."""

    clip_min: float | None = None
    clip_max: float | None = None
    normalisation: str = "none"
    mean: float | None = None
    sd: float | None = None


@dataclass(frozen=True)
class Preprocessing:
    """How the input becomes the network's input.

    ``target_spacing_mm`` is given along the model axes (X, Y, Z of ``orientation``);
    ``None`` keeps the input's spacing. No resampling happens when every axis is
    within ``spacing_tolerance`` (relative) of the target.
    """

    orientation: str = "RAS"
    target_spacing_mm: tuple[float, float, float] | None = None
    spacing_tolerance: float = 0.02
    intensity: IntensityPreprocessing = field(default_factory=IntensityPreprocessing)


@dataclass(frozen=True)
class NetworkSpec:
    """The network: a class of ``monai.networks.nets`` with its arguments, or TorchScript."""

    format: str
    class_name: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceSettings:
    """MONAI sliding-window settings (``roi_size`` along the model axes, in voxels)."""

    roi_size: tuple[int, int, int]
    overlap: float = 0.25
    blend_mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    padding_mode: str = "constant"
    padding_value: float = 0.0


@dataclass(frozen=True)
class Postprocessing:
    """How network outputs become labels."""

    activation: str = "softmax"
    decision: str = "argmax"
    thresholds: Mapping[int, float] | None = None
    largest_component: tuple[int, ...] = ()
    min_component_volume_ml: float = 0.0


@dataclass(frozen=True)
class LabelSpec:
    """One output label: its value, name, ``#rrggbb`` colour and DICOM terminology codes."""

    value: int
    name: str
    color: str
    terminology: Mapping[str, Any] = field(default_factory=dict)

    @property
    def color_rgb(self) -> tuple[float, float, float]:
        """The colour as three floats in [0, 1] (what Slicer's segments take)."""
        return tuple(int(self.color[i : i + 2], 16) / 255.0 for i in (1, 3, 5))


@dataclass(frozen=True)
class WeightsSpec:
    """The weights file: format, SHA-256, size, download URLs and an optional shipped bundle folder."""

    file: str
    format: str
    sha256: str
    size_bytes: int
    urls: tuple[str, ...] = ()
    bundle: str | None = None


@dataclass(frozen=True)
class Requirements:
    """What a run on ``reference_shape`` (model-axis voxels) needed when the entry was made."""

    reference_shape: tuple[int, int, int] | None = None
    memory_mb: Mapping[str, float | None] = field(default_factory=dict)
    time_s: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One model version of the catalogue (the JSON keys of ``Resources/models.json``)."""

    id: str
    version: str
    title: str
    task: str
    modality: str
    input_channels: int
    preprocessing: Preprocessing
    network: NetworkSpec
    inference: InferenceSettings
    postprocessing: Postprocessing
    labels: tuple[LabelSpec, ...]
    weights: WeightsSpec
    license: str
    description: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    reported_metrics: Mapping[str, Any] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)

    @property
    def key(self) -> str:
        """``id@version``."""
        return f"{self.id}@{self.version}"

    @property
    def label_names(self) -> dict[int, str]:
        return {label.value: label.name for label in self.labels}

    @property
    def output_channels(self) -> int:
        """Channels the network must give: background plus labels for argmax, one per label for thresholds."""
        return len(self.labels) + (1 if self.postprocessing.decision == "argmax" else 0)

    def to_json(self) -> dict:
        """The entry as catalogue JSON (the inverse of :func:`entry_from_json`)."""
        data = asdict(self)
        network = data.pop("network")
        data["network"] = {"format": network["format"]}
        if network["class_name"] is not None:
            data["network"]["class"] = network["class_name"]
            data["network"]["args"] = network["args"]
        post = data["postprocessing"]
        post["largest_component"] = list(post["largest_component"])
        if post["thresholds"] is not None:
            post["thresholds"] = {str(k): v for k, v in post["thresholds"].items()}
        data["labels"] = [dict(label) for label in data["labels"]]
        data["weights"]["urls"] = list(data["weights"]["urls"])
        for section, key in (("preprocessing", "target_spacing_mm"), ("inference", "roi_size")):
            if data[section][key] is not None:
                data[section][key] = list(data[section][key])
        if data["requirements"]["reference_shape"] is not None:
            data["requirements"]["reference_shape"] = list(data["requirements"]["reference_shape"])
        return data


_ENTRY_KEYS = (
    "id",
    "version",
    "title",
    "description",
    "task",
    "modality",
    "input_channels",
    "preprocessing",
    "network",
    "inference",
    "postprocessing",
    "labels",
    "weights",
    "license",
    "provenance",
    "reported_metrics",
    "requirements",
)


def _preprocessing(reader: _Reader) -> Preprocessing:
    from ImagInfoExtension.segmentation.space import orientation_vectors

    reader.only(("orientation", "target_spacing_mm", "spacing_tolerance", "intensity"))
    orientation = reader.get("orientation", str, "RAS")
    try:
        orientation_vectors(orientation)
    except ValueError as error:
        raise reader.fail("orientation", str(error)) from None
    intensity = reader.child("intensity", {}, ("clip_min", "clip_max", "normalisation", "mean", "sd"))
    normalisation = intensity.choice("normalisation", NORMALISATIONS, "none")
    clip_min = intensity.get("clip_min", float, None, optional=True)
    clip_max = intensity.get("clip_max", float, None, optional=True)
    if normalisation == "range" and (clip_min is None or clip_max is None):
        raise intensity.fail("normalisation", "'range' needs clip_min and clip_max")
    if clip_min is not None and clip_max is not None and clip_max <= clip_min:
        raise intensity.fail("clip_max", f"must exceed clip_min, got clip_min {clip_min}, clip_max {clip_max}")
    mean = intensity.get("mean", float, None, optional=True)
    sd = intensity.get("sd", float, None, optional=True)
    if normalisation == "fixed" and (mean is None or sd is None):
        raise intensity.fail("normalisation", "'fixed' needs a mean and a positive sd")
    if sd is not None and sd <= 0:
        raise intensity.fail("sd", f"must be positive, got {sd}")
    tolerance = reader.get("spacing_tolerance", float, 0.02)
    if not 0 <= tolerance < 0.5:
        raise reader.fail("spacing_tolerance", f"must lie in [0, 0.5), got {tolerance}")
    return Preprocessing(
        orientation=orientation.upper(),
        target_spacing_mm=reader.numbers("target_spacing_mm", 3, float, None),
        spacing_tolerance=tolerance,
        intensity=IntensityPreprocessing(clip_min, clip_max, normalisation, mean, sd),
    )


def _network(reader: _Reader) -> NetworkSpec:
    reader.only(("format", "class", "args"))
    kind = reader.choice("format", NETWORK_FORMATS)
    if kind == "torchscript":
        for key in ("class", "args"):
            if key in reader.data:
                raise reader.fail(key, "belongs to format 'monai' only; a TorchScript file holds its own network")
        return NetworkSpec(format=kind)
    class_name = reader.get("class", str)
    if not _CLASS_NAME.match(class_name):
        raise reader.fail("class", f"must be the bare name of a class in monai.networks.nets, got {class_name!r}")
    return NetworkSpec(format=kind, class_name=class_name, args=dict(reader.get("args", dict, {})))


def _inference(reader: _Reader) -> InferenceSettings:
    reader.only(("roi_size", "overlap", "blend_mode", "sigma_scale", "sw_batch_size", "padding_mode", "padding_value"))
    overlap = reader.get("overlap", float, 0.25)
    if not 0 <= overlap < 1:
        raise reader.fail("overlap", f"must lie in [0, 1), got {overlap}")
    batch = reader.get("sw_batch_size", int, 1)
    if batch < 1:
        raise reader.fail("sw_batch_size", f"must be at least 1, got {batch}")
    sigma_scale = reader.get("sigma_scale", float, 0.125)
    if sigma_scale <= 0:
        raise reader.fail("sigma_scale", f"must be positive, got {sigma_scale}")
    return InferenceSettings(
        roi_size=reader.numbers("roi_size", 3, int),
        overlap=overlap,
        blend_mode=reader.choice("blend_mode", BLEND_MODES, "gaussian"),
        sigma_scale=sigma_scale,
        sw_batch_size=batch,
        padding_mode=reader.choice("padding_mode", PADDING_MODES, "constant"),
        padding_value=reader.get("padding_value", float, 0.0),
    )


def _postprocessing(reader: _Reader, label_values: set[int]) -> Postprocessing:
    reader.only(("activation", "decision", "thresholds", "largest_component", "min_component_volume_ml"))
    decision = reader.choice("decision", DECISIONS, "argmax")
    thresholds = reader.get("thresholds", dict, None, optional=True)
    if thresholds is not None:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in thresholds.values())
        if not numbers or not all(isinstance(k, str) and _LABEL_KEY.match(k) for k in thresholds):
            raise reader.fail("thresholds", f"must map label values ('1', '2', ...) to numbers, got {thresholds!r}")
        thresholds = {int(k): float(v) for k, v in thresholds.items()}
    if decision == "thresholds":
        if not thresholds:
            raise reader.fail("thresholds", "must give a threshold per label when decision is 'thresholds'")
        if set(thresholds) != label_values:
            raise reader.fail("thresholds", f"covers labels {sorted(thresholds)}, the entry has {sorted(label_values)}")
    largest = reader.get("largest_component", list, [])
    whole = all(isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in largest)
    if not whole or any(int(v) not in label_values for v in largest):
        raise reader.fail("largest_component", f"must list label values of the entry, got {largest!r}")
    largest = [int(v) for v in largest]
    minimum = reader.get("min_component_volume_ml", float, 0.0)
    if minimum < 0:
        raise reader.fail("min_component_volume_ml", f"must not be negative, got {minimum}")
    return Postprocessing(
        activation=reader.choice("activation", ACTIVATIONS, "softmax"),
        decision=decision,
        thresholds=thresholds if decision == "thresholds" else None,
        largest_component=tuple(largest),
        min_component_volume_ml=minimum,
    )


def _terminology(reader: _Reader) -> dict[str, dict[str, str]]:
    reader.only(TERMINOLOGY_KEYS)
    codes = {}
    for key in TERMINOLOGY_KEYS:
        if key in reader.data:
            code = reader.child(key, keys=("scheme", "code", "meaning"))
            codes[key] = {name: code.text(name) for name in ("scheme", "code", "meaning")}
    if codes and not {"category", "type"} <= codes.keys():
        missing = "category" if "category" not in codes else "type"
        raise reader.fail(missing, "is missing; a terminology names at least a category and a type")
    return codes


def _labels(entries: list, where: str) -> tuple[LabelSpec, ...]:
    if not entries:
        raise CatalogueError(f"{where}: 'labels' must list at least one label")
    labels = []
    for number, entry in enumerate(entries):
        reader = _Reader(entry, f"{where}.labels[{number}]", ("value", "name", "color", "terminology"))
        value = reader.get("value", int)
        if not 1 <= value <= 255:
            raise reader.fail("value", f"must lie in 1..255 (0 is background), got {value}")
        color = reader.get("color", str)
        if not _COLOUR.match(color):
            raise reader.fail("color", f"must be '#rrggbb', got {color!r}")
        terminology = _terminology(reader.child("terminology", {}))
        labels.append(LabelSpec(value, reader.text("name"), color, terminology))
    values = [label.value for label in labels]
    if len(set(values)) != len(values):
        raise CatalogueError(f"{where}: 'labels' repeats a value: {values}")
    return tuple(labels)


def _weights(reader: _Reader) -> WeightsSpec:
    reader.only(("file", "format", "sha256", "size_bytes", "urls", "bundle"))
    sha256 = reader.get("sha256", str)
    if not _SHA256.match(sha256):
        raise reader.fail("sha256", f"must be 64 hexadecimal digits, got {sha256!r}")
    size = reader.get("size_bytes", int)
    if size <= 0:
        raise reader.fail("size_bytes", f"must be positive, got {size}")
    urls = reader.get("urls", list, [])
    if not all(isinstance(url, str) and _URL.match(url) for url in urls):
        raise reader.fail("urls", f"must be a list of http://, https:// or file:// addresses, got {urls!r}")
    file = reader.get("file", str)
    bundle = reader.get("bundle", str, None, optional=True)
    for key, value in (("file", file), ("bundle", bundle)):
        if value is not None and not _relative_path(value):
            raise reader.fail(key, f"must be a relative path with '/' that stays inside its folder, got {value!r}")
    return WeightsSpec(
        file=file,
        format=reader.choice("format", WEIGHT_FORMATS),
        sha256=sha256.lower(),
        size_bytes=size,
        urls=tuple(urls),
        bundle=bundle,
    )


def _requirements(reader: _Reader) -> Requirements:
    reader.only(("reference_shape", "memory_mb", "time_s"))
    per_device = {}
    for key in ("memory_mb", "time_s"):
        values = reader.get(key, dict, {})
        for device, value in values.items():
            if device not in REQUIREMENT_DEVICES:
                raise reader.fail(key, f"names device {device!r}; use {' or '.join(REQUIREMENT_DEVICES)}")
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise reader.fail(key, f"'{device}' must be a non-negative number or null, got {value!r}")
        per_device[key] = {device: None if v is None else float(v) for device, v in values.items()}
    return Requirements(
        reference_shape=reader.numbers("reference_shape", 3, int, None),
        memory_mb=per_device["memory_mb"],
        time_s=per_device["time_s"],
    )


def entry_from_json(data: object, source: str = "catalogue") -> ModelEntry:
    """Validate and read one catalogue entry.

    Raises
    ------
    CatalogueError
        Naming the entry, the key and what it must be; unknown keys are refused too.
    """
    reader = _Reader(data, source)
    model_id = reader.get("id", str)
    if not _MODEL_ID.match(model_id):
        raise reader.fail("id", f"must be lower-case letters, digits, '.', '_' or '-', got {model_id!r}")
    reader.where = f"{source}: model {model_id}"
    reader.only(_ENTRY_KEYS)
    version = reader.get("version", str)
    if not _SEMVER.match(version):
        raise reader.fail("version", f"must be a semantic version MAJOR.MINOR.PATCH such as '1.0.0', got {version!r}")
    labels = _labels(reader.get("labels", list), reader.where)
    network = _network(reader.child("network"))
    weights = _weights(reader.child("weights"))
    if (network.format == "torchscript") != (weights.format == "torchscript"):
        raise reader.fail("weights", "format must be 'torchscript' exactly when the network's format is")
    channels = reader.get("input_channels", int)
    if channels < 1:
        raise reader.fail("input_channels", f"must be at least 1, got {channels}")
    return ModelEntry(
        id=model_id,
        version=version,
        title=reader.text("title"),
        description=reader.get("description", str, ""),
        task=reader.text("task"),
        modality=reader.text("modality").upper(),
        input_channels=channels,
        preprocessing=_preprocessing(reader.child("preprocessing")),
        network=network,
        inference=_inference(reader.child("inference")),
        postprocessing=_postprocessing(reader.child("postprocessing"), {label.value for label in labels}),
        labels=labels,
        weights=weights,
        license=reader.text("license"),
        provenance=dict(reader.get("provenance", dict, {})),
        reported_metrics=dict(reader.get("reported_metrics", dict, {})),
        requirements=_requirements(reader.child("requirements", {})),
    )


def resources_directories() -> list[Path]:
    """Where the shipped catalogue, its schema and the shipped model bundles are looked for, in order.

    Installed in Slicer, the extension's build copies ``Resources/models.json``,
    ``Resources/models.schema.json`` and ``Resources/Models/`` into ``resources/``
    beside this module (as the radiomics presets go to ``radiomics/presets``); in the
    source tree they are the repository's ``Resources/``.
    """
    package = Path(__file__).resolve().parent
    return [package / "resources", package.parents[1] / "Resources"]


def _resource(name: str) -> Path:
    for directory in resources_directories():
        if (directory / name).is_file():
            return directory / name
    searched = ", ".join(str(directory) for directory in resources_directories())
    raise CatalogueError(f"the shipped {name} is missing (looked in {searched}); reinstall the ImagInfo extension")


def shipped_catalogue_path() -> Path:
    """The shipped ``models.json``."""
    return _resource(CATALOGUE_FILE)


def schema_path() -> Path:
    """The catalogue's JSON schema ``models.schema.json``."""
    return _resource(SCHEMA_FILE)


#: The environment variable that overrides the per-user cache of weights and imported models.
CACHE_VARIABLE = "IMAGINFO_MODEL_CACHE"


def cache_directory() -> Path:
    """The per-user weights cache (not created here); ``$IMAGINFO_MODEL_CACHE`` overrides it."""
    override = os.environ.get(CACHE_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "").strip()
        return (Path(local) if local else home / "AppData" / "Local") / "imaginfo" / "models"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "imaginfo" / "models"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "imaginfo" / "models"


def user_catalogue_path() -> Path:
    """The user catalogue of imported models, ``<cache>/catalogue.json``."""
    return cache_directory() / USER_CATALOGUE_FILE


def schema_errors(document: object) -> list[str] | None:
    """What the JSON schema finds wrong with a catalogue document, one line per problem (``path: message``).

    None when jsonschema is not importable (Slicer may lack it) or the schema is not
    installed: :func:`entry_from_json` checks everything the schema states by itself.
    """
    try:
        import jsonschema  # noqa: PLC0415  (optional: not every Slicer has it)

        schema = json.loads(schema_path().read_text(encoding="utf-8"))
    except (ImportError, CatalogueError):
        return None
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def read_catalogue_file(path: str | Path) -> list[ModelEntry]:
    """The entries of one catalogue file, each validated.

    Raises
    ------
    CatalogueError
        When the file is missing, is not JSON, states another schema version, repeats
        an ``id@version``, or an entry is invalid (the message names the file, the entry
        and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"the catalogue {path} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CatalogueError(f"{path}: is not valid JSON ({error}); fix or delete the file") from None
    reader = _Reader(document, str(path), ("schema_version", "models"))
    version = reader.get("schema_version", int)
    if version != SCHEMA_VERSION:
        newer = " (written by a newer ImagInfo: update ImagInfo)" if version > SCHEMA_VERSION else ""
        raise reader.fail("schema_version", f"is {version}; this ImagInfo reads version {SCHEMA_VERSION}{newer}")
    models = reader.get("models", list)
    entries: list[ModelEntry] = []
    for number, data in enumerate(models):
        entry = entry_from_json(data, f"{path}: models[{number}]")
        if any(other.key == entry.key for other in entries):
            raise CatalogueError(f"{path}: {entry.key} is listed twice; keep one (or give the other a new version)")
        entries.append(entry)
    problems = schema_errors(document)
    if problems:
        raise CatalogueError(f"{path}: does not follow {SCHEMA_FILE}: {problems[0]}")
    return entries


class Catalogue:
    """Catalogue entries by id and version.

    ``get(id)`` gives the newest version (semantic-version order); ``get(id, version)``
    or ``get("id@version")`` a given one.
    """

    def __init__(self, entries: Iterable[ModelEntry] = (), sources: Mapping[str, Path] | None = None) -> None:
        self._entries: dict[str, dict[str, ModelEntry]] = {}
        for entry in entries:
            versions = self._entries.setdefault(entry.id, {})
            if entry.version in versions and versions[entry.version] != entry:
                raise CatalogueError(f"{entry.key} appears twice with different contents")
            versions[entry.version] = entry
        self._sources = dict(sources or {})

    @property
    def entries(self) -> tuple[ModelEntry, ...]:
        """Every entry, by id, then oldest to newest version."""
        return tuple(self._entries[model_id][v] for model_id in self.ids() for v in self.versions(model_id))

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, model_id: str) -> list[str]:
        """The versions of a model, oldest first (empty when the id is unknown)."""
        return sorted(self._entries.get(model_id, {}), key=semantic_version_key)

    def source(self, entry: ModelEntry | str) -> Path | None:
        """The catalogue file an entry (or ``id@version``) came from."""
        return self._sources.get(entry.key if isinstance(entry, ModelEntry) else entry)

    def get(self, model_id: str, version: str | None = None) -> ModelEntry:
        """One entry: the newest version of ``model_id`` unless ``version`` is given.

        Raises
        ------
        CatalogueError
            When the id or the version is unknown; the message lists what the catalogue holds.
        """
        if version is None and "@" in model_id:
            model_id, _, version = model_id.partition("@")
        if model_id not in self._entries:
            known = ", ".join(self.ids()) or "none"
            close = difflib.get_close_matches(model_id, self.ids(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise CatalogueError(
                f"there is no model '{model_id}' in the catalogue; {hint}known models: {known} "
                "(`imaginfo models list` shows them; `imaginfo models import PATH --id ID` adds a MONAI bundle)"
            )
        versions = self.versions(model_id)
        if version is None:
            return self._entries[model_id][versions[-1]]
        if version not in self._entries[model_id]:
            raise CatalogueError(f"model '{model_id}' has no version {version}; its versions: {', '.join(versions)}")
        return self._entries[model_id][version]

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._entries.values())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        model_id, _, version = key.partition("@")
        return model_id in self._entries and (not version or version in self._entries[model_id])


def load_catalogue(paths: Sequence[str | Path] | None = None) -> Catalogue:
    """Read catalogue files into one :class:`Catalogue`.

    Parameters
    ----------
    paths : sequence of path, optional
        Catalogue files; by default the shipped ``models.json`` and, when it exists,
        the user catalogue ``<cache>/catalogue.json``.

    Raises
    ------
    CatalogueError
        When a file is invalid (see :func:`read_catalogue_file`) or two files give one
        ``id@version`` different contents.
    """
    if paths is None:
        user = user_catalogue_path()
        paths = [shipped_catalogue_path(), *([user] if user.is_file() else [])]
    entries: dict[str, ModelEntry] = {}
    sources: dict[str, Path] = {}
    for path in map(Path, paths):
        for entry in read_catalogue_file(path):
            if entry.key in entries and entries[entry.key] != entry:
                raise CatalogueError(
                    f"{path}: {entry.key} is also in {sources[entry.key]} with different contents; "
                    f"remove it from {path} or import it under another version"
                )
            entries.setdefault(entry.key, entry)
            sources.setdefault(entry.key, path)
    return Catalogue(entries.values(), sources)


def write_catalogue_file(path: str | Path, entries: Iterable[ModelEntry]) -> Path:
    """Write a catalogue file atomically (a temporary sibling, then ``os.replace``)."""
    path = Path(path)
    ordered = sorted(entries, key=lambda e: (e.id, semantic_version_key(e.version)))
    text = json.dumps({"schema_version": SCHEMA_VERSION, "models": [e.to_json() for e in ordered]}, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text + "\n")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def add_user_entry(entry: ModelEntry, path: str | Path | None = None) -> Path:
    """Add an entry to the user catalogue (replacing the same ``id@version``); returns the catalogue's path.

    Raises
    ------
    CatalogueError
        When the shipped catalogue holds that ``id@version`` with other contents (a
        shipped model is never shadowed), or the user catalogue on disk is invalid.
    """
    path = Path(path) if path is not None else user_catalogue_path()
    entry = entry_from_json(entry.to_json(), f"the entry to add ({entry.key})")  # only valid entries are written
    shipped = read_catalogue_file(shipped_catalogue_path())
    if any(other.key == entry.key and other != entry for other in shipped):
        raise CatalogueError(
            f"{entry.key} is a shipped model; import yours under another id or version (--id, --version)"
        )
    existing = read_catalogue_file(path) if path.is_file() else []
    return write_catalogue_file(path, [other for other in existing if other.key != entry.key] + [entry])
