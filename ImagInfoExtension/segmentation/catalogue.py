"""The model catalogue: one validated entry per model version.

An entry says everything needed to run a model reproducibly: what it segments,
how its input is prepared, which network it is, how the sliding window runs, how
its output becomes labels, what the labels mean, where its weights come from and
what they hash to, and what a run costs. ``Resources/models.json`` holds the
entries we ship; ``Resources/models.schema.json`` is their JSON schema.

This module imports neither torch nor MONAI, so the Slicer module and the study
plugin can list models on a Slicer that has neither yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Every catalogue file states this schema version.
SCHEMA_VERSION = 1
NETWORK_FORMATS = ("monai", "torchscript")
WEIGHT_FORMATS = ("state_dict", "safetensors", "torchscript")
NORMALISATIONS = ("range", "zscore", "fixed", "none")
ACTIVATIONS = ("softmax", "sigmoid", "none")
DECISIONS = ("argmax", "thresholds")
BLEND_MODES = ("gaussian", "constant")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class CatalogueError(ValueError):
    """A catalogue entry that cannot be used as written; the message names the entry, the key and the fix."""


class _Reader:
    """Reads one JSON object, naming the entry and key in every error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise CatalogueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.where = where

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
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"must be {getattr(kind, '__name__', kind)}, got a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {type(value).__name__}")
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

    def child(self, key: str, default: Any = ...) -> _Reader:
        value = self.get(key, dict, default)
        return _Reader(value, f"{self.where}.{key}")


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


def _preprocessing(reader: _Reader) -> Preprocessing:
    from ImagInfoExtension.segmentation.space import orientation_vectors

    orientation = reader.get("orientation", str, "RAS")
    try:
        orientation_vectors(orientation)
    except ValueError as error:
        raise reader.fail("orientation", str(error)) from None
    intensity = reader.child("intensity", {})
    normalisation = intensity.choice("normalisation", NORMALISATIONS, "none")
    clip_min = intensity.get("clip_min", float, None, optional=True)
    clip_max = intensity.get("clip_max", float, None, optional=True)
    if normalisation == "range" and (clip_min is None or clip_max is None or clip_max <= clip_min):
        raise intensity.fail("normalisation", "'range' needs clip_min < clip_max")
    mean = intensity.get("mean", float, None, optional=True)
    sd = intensity.get("sd", float, None, optional=True)
    if normalisation == "fixed" and (mean is None or sd is None or sd <= 0):
        raise intensity.fail("normalisation", "'fixed' needs a mean and a positive sd")
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
    kind = reader.choice("format", NETWORK_FORMATS)
    if kind == "torchscript":
        return NetworkSpec(format=kind)
    class_name = reader.get("class", str)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", class_name):
        raise reader.fail("class", f"must be the bare name of a class in monai.networks.nets, got {class_name!r}")
    return NetworkSpec(format=kind, class_name=class_name, args=dict(reader.get("args", dict, {})))


def _inference(reader: _Reader) -> InferenceSettings:
    overlap = reader.get("overlap", float, 0.25)
    if not 0 <= overlap < 1:
        raise reader.fail("overlap", f"must lie in [0, 1), got {overlap}")
    batch = reader.get("sw_batch_size", int, 1)
    if batch < 1:
        raise reader.fail("sw_batch_size", f"must be at least 1, got {batch}")
    return InferenceSettings(
        roi_size=reader.numbers("roi_size", 3, int),
        overlap=overlap,
        blend_mode=reader.choice("blend_mode", BLEND_MODES, "gaussian"),
        sigma_scale=reader.get("sigma_scale", float, 0.125),
        sw_batch_size=batch,
        padding_mode=reader.get("padding_mode", str, "constant"),
        padding_value=reader.get("padding_value", float, 0.0),
    )


def _postprocessing(reader: _Reader, label_values: set[int]) -> Postprocessing:
    decision = reader.choice("decision", DECISIONS, "argmax")
    thresholds = reader.get("thresholds", dict, None, optional=True)
    if decision == "thresholds":
        if not thresholds:
            raise reader.fail("thresholds", "must give a threshold per label when decision is 'thresholds'")
        try:
            thresholds = {int(k): float(v) for k, v in thresholds.items()}
        except (TypeError, ValueError):
            raise reader.fail("thresholds", f"must map label values to numbers, got {thresholds!r}") from None
        if set(thresholds) != label_values:
            raise reader.fail("thresholds", f"covers labels {sorted(thresholds)}, the entry has {sorted(label_values)}")
    largest = reader.get("largest_component", list, [])
    if any(not isinstance(v, int) or v not in label_values for v in largest):
        raise reader.fail("largest_component", f"must list label values of the entry, got {largest!r}")
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


def _labels(entries: list, where: str) -> tuple[LabelSpec, ...]:
    if not entries:
        raise CatalogueError(f"{where}: 'labels' must list at least one label")
    labels = []
    for number, entry in enumerate(entries):
        reader = _Reader(entry, f"{where}.labels[{number}]")
        value = reader.get("value", int)
        if not 1 <= value <= 255:
            raise reader.fail("value", f"must lie in 1..255 (0 is background), got {value}")
        color = reader.get("color", str)
        if not _COLOUR.match(color):
            raise reader.fail("color", f"must be '#rrggbb', got {color!r}")
        labels.append(LabelSpec(value, reader.get("name", str), color, dict(reader.get("terminology", dict, {}))))
    values = [label.value for label in labels]
    if len(set(values)) != len(values):
        raise CatalogueError(f"{where}: 'labels' repeats a value: {values}")
    return tuple(labels)


def _weights(reader: _Reader) -> WeightsSpec:
    sha256 = reader.get("sha256", str).lower()
    if not _SHA256.match(sha256):
        raise reader.fail("sha256", f"must be 64 hexadecimal digits, got {sha256!r}")
    size = reader.get("size_bytes", int)
    if size <= 0:
        raise reader.fail("size_bytes", f"must be positive, got {size}")
    urls = reader.get("urls", list, [])
    if not all(isinstance(url, str) for url in urls):
        raise reader.fail("urls", "must be a list of strings")
    return WeightsSpec(
        file=reader.get("file", str),
        format=reader.choice("format", WEIGHT_FORMATS),
        sha256=sha256,
        size_bytes=size,
        urls=tuple(urls),
        bundle=reader.get("bundle", str, None, optional=True),
    )


def entry_from_json(data: object, source: str = "catalogue") -> ModelEntry:
    """Validate and read one catalogue entry.

    Raises
    ------
    CatalogueError
        Naming the entry, the key and what it must be.
    """
    reader = _Reader(data, source)
    model_id = reader.get("id", str)
    if not _MODEL_ID.match(model_id):
        raise reader.fail("id", f"must be lower-case letters, digits, '.', '_' or '-', got {model_id!r}")
    reader.where = f"{source}: model {model_id}"
    labels = _labels(reader.get("labels", list), reader.where)
    network = _network(reader.child("network"))
    weights = _weights(reader.child("weights"))
    if (network.format == "torchscript") != (weights.format == "torchscript"):
        raise reader.fail("weights", "format must be 'torchscript' exactly when the network's format is")
    channels = reader.get("input_channels", int)
    if channels < 1:
        raise reader.fail("input_channels", f"must be at least 1, got {channels}")
    requirements = reader.child("requirements", {})
    return ModelEntry(
        id=model_id,
        version=reader.get("version", str),
        title=reader.get("title", str),
        description=reader.get("description", str, ""),
        task=reader.get("task", str),
        modality=reader.get("modality", str).upper(),
        input_channels=channels,
        preprocessing=_preprocessing(reader.child("preprocessing")),
        network=network,
        inference=_inference(reader.child("inference")),
        postprocessing=_postprocessing(reader.child("postprocessing"), {label.value for label in labels}),
        labels=labels,
        weights=weights,
        license=reader.get("license", str),
        provenance=dict(reader.get("provenance", dict, {})),
        reported_metrics=dict(reader.get("reported_metrics", dict, {})),
        requirements=Requirements(
            reference_shape=requirements.numbers("reference_shape", 3, int, None),
            memory_mb=dict(requirements.get("memory_mb", dict, {})),
            time_s=dict(requirements.get("time_s", dict, {})),
        ),
    )
