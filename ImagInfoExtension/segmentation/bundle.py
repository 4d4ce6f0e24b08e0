"""MONAI bundles as catalogue entries.

A MONAI bundle is a folder (or a ``.zip`` / ``.tar.gz`` of one)::

    configs/metadata.json        version, licence, network_data_format (modality, channels, channel_def)
    configs/inference.json       or inference.yaml: network_def, preprocessing, inferer, postprocessing
    models/model.pt              a state dict (torch.save(model.state_dict()))
      or models/model.safetensors
      or models/model.ts         TorchScript (then network_def is not needed)
    LICENSE                      optional; the licence when metadata states none

:func:`entry_from_bundle` maps it onto a catalogue entry, reading values and never
evaluating anything: ``$`` expressions and ``%`` macros are refused, ``@id``
references to plain values are followed. What it reads:

* ``network_def``: ``_target_`` a class of ``monai.networks.nets`` (``UNet`` or
  ``monai.networks.nets.UNet``) and its arguments;
* ``preprocessing`` transforms: ``Orientationd`` (``axcodes``), ``Spacingd``
  (``pixdim``, bilinear), ``ScaleIntensityRanged`` (``a_min``/``a_max`` to
  ``b_min=0``/``b_max=1`` with ``clip=true``: range normalisation of the window),
  ``NormalizeIntensityd`` (z-score, or a fixed ``subtrahend``/``divisor``); loading,
  channel-first and type transforms are passed over;
* ``inferer``: ``SlidingWindowInferer`` (``roi_size``, ``overlap``, ``mode``,
  ``sigma_scale``, ``sw_batch_size``, ``padding_mode``, ``cval``), with MONAI's
  defaults (``mode`` constant) where a key is absent;
* ``postprocessing`` transforms: ``Activationsd`` (softmax/sigmoid), ``AsDiscreted``
  (argmax, or threshold), ``KeepLargestConnectedComponentd`` (``applied_labels``),
  ``RemoveSmallObjectsd`` (``min_size`` in mm³ with ``by_measure=true``); inversion,
  saving and type transforms are passed over;
* the labels from ``network_data_format.outputs.pred.channel_def`` of metadata
  (channel 0 is the background under argmax), coloured from a fixed palette;
* the version from metadata ``version``; the licence from metadata ``license`` or
  the ``LICENSE`` file; the weights' SHA-256 and size from the file itself.

Anything else (another transform, a key it cannot map) is refused with a
:class:`BundleError` naming the file and the key, rather than imported as
something that would run differently from the bundle.

The ``imaginfo`` block
----------------------
``configs/metadata.json`` may carry an ``"imaginfo"`` object with what a MONAI
bundle cannot say. Each key is optional; unknown keys are refused::

    "imaginfo": {
      "id": "imaginfo-phantom-vessels",                         # the id the bundle suggests (import --id decides)
      "title": "Lung-vessel phantom: vessels by radius class",   # default: metadata "name", else the id
      "description": "...",                                     # default: metadata "description"
      "task": "segmentation",                                   # default: "segmentation"
      "modality": "CT",                                         # default: inputs.image.modality (MRI -> MR, PET -> PT)
      "license": "Apache-2.0",                                  # default: metadata "license", else LICENSE
      "preprocessing": {"spacing_tolerance": 0.02,              # relative; default 0.02 (MONAI has no such key);
                        "orientation": "RAS",                   # the other keys are optional and must equal what
                        "target_spacing_mm": [0.9, 0.9, 1.25],  # inference.json's transforms give
                        "intensity": {"clip_min": -1000.0, "clip_max": 400.0, "normalisation": "range",
                                      "mean": null, "sd": null}},
      "labels": [                                               # default: channel_def, palette colours
        {"value": 1, "name": "vessel r=0.1 mm", "color": "#rrggbb",
         "terminology": {"category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
                         "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"}}}
      ],
      "postprocessing": {"activation": "softmax", "decision": "argmax", "thresholds": null,
                         "largest_component": [], "min_component_volume_ml": 0.0},
                                                                # replaces the mapping of the config's postprocessing
      "requirements": {"reference_shape": [250, 184, 108], "memory_mb": {"cpu": 900, "gpu": 600},
                       "time_s": {"cpu": 25.0, "gpu": null}},
      "provenance": {"trained_by": "ImagInfo", "script": "...", "data": "...", "seed": 0, "training_time_s": 0.0},
                                                                # default: authors, copyright and versions of metadata
      "reported_metrics": {"dice": {"1.0": 0.93}},
      "urls": ["https://.../model.pt"]                          # download addresses of the weights
    }

Each value has the form of the same key of a catalogue entry
(``Resources/models.schema.json``). Label names must equal the ``channel_def``
names of their channels (value ``k`` is channel ``k`` under argmax, channel
``k - 1`` under thresholds), and the network's ``out_channels`` must match the
labels. Preprocessing, network and sliding window come from ``inference.json``
only, so that the bundle runs the same under MONAI and ImagInfo; with an
``imaginfo`` block our own shipped bundle maps onto its catalogue entry exactly
(``entry_from_bundle(bundle) == shipped entry``; the test suite checks it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ImagInfoExtension.segmentation.catalogue import (
    CatalogueError,
    ModelEntry,
    add_user_entry,
    entry_from_json,
    read_catalogue_file,
    resources_directories,
    semantic_version_key,
    shipped_catalogue_path,
)

#: The keys of the ``imaginfo`` block of a bundle's metadata.json.
IMAGINFO_KEYS = (
    "id",
    "title",
    "description",
    "task",
    "modality",
    "license",
    "preprocessing",
    "labels",
    "postprocessing",
    "requirements",
    "provenance",
    "reported_metrics",
    "urls",
)
#: Weight files looked for in ``models/``, in order of preference (plain tensors first).
WEIGHT_FILES = (
    ("models/model.safetensors", "safetensors"),
    ("models/model.pt", "state_dict"),
    ("models/model.ts", "torchscript"),
)
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "docs/LICENSE", "docs/LICENSE.txt")
#: Colours given to labels of bundles without an ``imaginfo`` block (Slicer's first generic colours).
PALETTE = (
    "#80ae80",
    "#f1d691",
    "#b17a65",
    "#6fb8d2",
    "#d8654f",
    "#dd8265",
    "#90ee90",
    "#c0687d",
    "#dcf514",
    "#4e3f00",
    "#ffface",
    "#e6dc46",
)
_MODALITIES = {"MRI": "MR", "PET": "PT"}
#: Transforms that load, reshape channels, cast or move data, which change no value the network sees.
_PASSIVE_PRE = {
    "LoadImage",
    "LoadImaged",
    "EnsureChannelFirst",
    "EnsureChannelFirstd",
    "AddChannel",
    "AddChanneld",
    "EnsureType",
    "EnsureTyped",
    "ToTensor",
    "ToTensord",
    "ToDevice",
    "ToDeviced",
    "Identity",
    "Identityd",
    "CastToType",
    "CastToTyped",
}
#: Transforms after the network that invert the geometry, save or cast, which ImagInfo does its own way.
_PASSIVE_POST = _PASSIVE_PRE | {
    "Invert",
    "Invertd",
    "SaveImage",
    "SaveImaged",
    "CopyItemsd",
    "DeleteItemsd",
    "ToNumpy",
    "ToNumpyd",
    "SqueezeDim",
    "SqueezeDimd",
}
_INFERER_EXECUTION_KEYS = {
    "sw_device",
    "device",
    "progress",
    "cache_roi_weight_map",
    "cpu_thresh",
    "buffer_steps",
    "buffer_dim",
    "with_coord",
}


class BundleError(CatalogueError):
    """A bundle that cannot be imported as it is; the message names the file, the key and the fix."""


# --- reading configs without evaluating them -----------------------------------------------------


class _Config:
    """A bundle config read as plain values: ``@id`` references followed, expressions refused."""

    def __init__(self, data: Mapping[str, Any], name: str) -> None:
        self.data = data
        self.name = name

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.name}: '{key}' {problem}")

    def lookup(self, path: str, where: str) -> Any:
        node: Any = self.data
        for part in path.replace("#", "::").split("::"):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.fail(where, f"refers to '@{path}', which the config does not hold")
        return node

    def resolve(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 32:
            raise self.fail(where, "refers to itself through '@' references")
        if isinstance(value, str):
            if value.startswith("@"):
                return self.resolve(self.lookup(value[1:], where), where, depth + 1)
            if value.startswith(("$", "%")):
                kind = "a Python expression" if value.startswith("$") else "a macro into another file"
                raise self.fail(
                    where,
                    f"is {kind} ({value!r}); ImagInfo never evaluates bundle code: write the value in the config",
                )
            return value
        if isinstance(value, Mapping):
            return {k: self.resolve(v, f"{where}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.resolve(self.data[key], key) if key in self.data else default


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml  # noqa: PLC0415  (PyYAML: safe_load builds plain values only)

        return yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001  (any parser error is the file's problem)
        raise BundleError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None


def _target(node: Any, where: str, config: _Config, prefix: str) -> str:
    """The class name a ``_target_`` names, when it lies in ``prefix`` (a module path) or is bare."""
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        raise config.fail(where, "must be an object with a '_target_' class name")
    target = node["_target_"]
    if "." in target:
        module, _, name = target.rpartition(".")
        if not (module == prefix or module.startswith(prefix + ".")):
            raise config.fail(
                f"{where}._target_", f"is {target!r}; ImagInfo imports only classes of {prefix} (e.g. {prefix}.UNet)"
            )
        target = name
    if node.get("_disabled_") in (True, "true", "True"):
        return ""
    if node.get("_mode_", "default") != "default":
        raise config.fail(f"{where}._mode_", f"is {node['_mode_']!r}; only 'default' (instantiate) can be mapped")
    if "_requires_" in node:
        raise config.fail(f"{where}._requires_", "runs other config items first; ImagInfo cannot map that")
    return target


def _arguments(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}


def _transforms(config: _Config, key: str) -> list[tuple[str, str, dict]]:
    """``(where, name, arguments)`` of each transform of a ``Compose`` (or list) under ``key``."""
    node = config.get(key)
    if node is None:
        return []
    items = node
    where = key
    if isinstance(node, Mapping):
        if _target(node, key, config, "monai.transforms") != "Compose":
            raise config.fail(f"{key}._target_", "must be Compose (a list of transforms)")
        items, where = node.get("transforms", []), f"{key}.transforms"
    if not isinstance(items, list):
        raise config.fail(where, "must be a list of transforms")
    out = []
    for number, item in enumerate(items):
        place = f"{where}[{number}]"
        name = _target(item, place, config, "monai.transforms")
        if name:
            out.append((place, name, _arguments(item)))
    return out


# --- mapping ------------------------------------------------------------------------------------


def _number(config: _Config, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise config.fail(where, f"must be a number, got {value!r}")
    return float(value)


def _preprocessing(config: _Config, spacing_tolerance: float) -> dict:
    orientation, spacing = None, None
    intensity: dict[str, Any] = {"clip_min": None, "clip_max": None, "normalisation": "none", "mean": None, "sd": None}
    intensity_seen = None
    for where, name, args in _transforms(config, "preprocessing"):
        if name in _PASSIVE_PRE:
            continue
        if name in ("Orientationd", "Orientation"):
            if args.get("as_closest_canonical"):
                raise config.fail(f"{where}.as_closest_canonical", "is true; give axcodes such as 'RAS' instead")
            if not isinstance(args.get("axcodes"), str):
                raise config.fail(f"{where}.axcodes", "must be an orientation code such as 'RAS'")
            orientation = args["axcodes"]
        elif name in ("Spacingd", "Spacing"):
            if intensity_seen is not None:
                raise config.fail(
                    where,
                    f"resamples after {intensity_seen}; ImagInfo resamples before the intensity window, "
                    "so the bundle would run differently",
                )
            spacing = _spacing(config, where, args)
        elif name in ("ScaleIntensityRanged", "ScaleIntensityRange", "NormalizeIntensityd", "NormalizeIntensity"):
            if intensity_seen is not None:
                raise config.fail(where, f"is a second intensity transform after {intensity_seen}; cannot be mapped")
            intensity_seen = f"{where} ({name})"
            intensity.update(_intensity(config, where, name, args))
        else:
            raise config.fail(
                where,
                f"is {name}, which ImagInfo cannot map onto its preprocessing (it maps Orientationd, Spacingd, "
                "ScaleIntensityRanged and NormalizeIntensityd, and passes over loading and type transforms)",
            )
    return {
        "orientation": (orientation or "RAS").upper(),
        "target_spacing_mm": spacing,
        "spacing_tolerance": spacing_tolerance,
        "intensity": intensity,
    }


def _check_stated_preprocessing(metadata: _Config, stated: Any, mapped: Mapping[str, Any]) -> None:
    """The ``imaginfo.preprocessing`` keys other than spacing_tolerance must restate inference.json exactly."""
    if not isinstance(stated, Mapping):
        raise metadata.fail("imaginfo.preprocessing", "must be an object")

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return all(key in b and same(value, b[key]) for key, value in a.items())
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, str) and isinstance(b, str):
            return a.upper() == b.upper()
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        return float(a) == float(b) if numbers else a == b

    for key, value in stated.items():
        if key == "spacing_tolerance":
            continue
        if key not in mapped or not same(value, mapped[key]):
            raise metadata.fail(
                f"imaginfo.preprocessing.{key}",
                f"is {value!r}, but the preprocessing transforms of inference.json give {mapped.get(key)!r}; "
                "inference.json decides (the bundle must run the same under MONAI): make them equal",
            )


def _spacing(config: _Config, where: str, args: Mapping[str, Any]) -> list[float]:
    pixdim = args.get("pixdim")
    values = [pixdim] * 3 if isinstance(pixdim, int | float) and not isinstance(pixdim, bool) else pixdim
    if (
        not isinstance(values, list)
        or len(values) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise config.fail(f"{where}.pixdim", f"must be three positive spacings in mm, got {pixdim!r}")
    mode = args.get("mode", "bilinear")
    first = mode[0] if isinstance(mode, list) and mode else mode
    if first not in ("bilinear", 1):
        raise config.fail(f"{where}.mode", f"is {mode!r}; ImagInfo resamples images linearly (bilinear)")
    for key, default in (("diagonal", False), ("scale_extent", False), ("min_pixdim", None), ("max_pixdim", None)):
        if args.get(key, default) != default:
            raise config.fail(f"{where}.{key}", f"is {args[key]!r}; only {default!r} can be mapped")
    return [float(v) for v in values]


def _intensity(config: _Config, where: str, name: str, args: Mapping[str, Any]) -> dict:
    if name.startswith("ScaleIntensityRange"):
        for key, wanted in (("b_min", 0), ("b_max", 1), ("clip", True)):
            if args.get(key) != wanted:
                raise config.fail(
                    f"{where}.{key}",
                    f"is {args.get(key)!r}; ImagInfo's range normalisation maps the clipped window to [0, 1] "
                    "(b_min 0, b_max 1, clip true)",
                )
        return {
            "clip_min": _number(config, f"{where}.a_min", args.get("a_min")),
            "clip_max": _number(config, f"{where}.a_max", args.get("a_max")),
            "normalisation": "range",
        }
    if args.get("nonzero", False):
        raise config.fail(f"{where}.nonzero", "is true; ImagInfo's z-score uses every voxel")
    subtrahend, divisor = args.get("subtrahend"), args.get("divisor")
    if subtrahend is None and divisor is None:
        return {"normalisation": "zscore"}
    if subtrahend is None or divisor is None:
        raise config.fail(f"{where}.subtrahend", "and divisor must be given together to be mapped")
    return {
        "normalisation": "fixed",
        "mean": _number(config, f"{where}.subtrahend", subtrahend),
        "sd": _number(config, f"{where}.divisor", divisor),
    }


def _inference(config: _Config) -> dict:
    node = config.get("inferer")
    if node is None:
        raise config.fail("inferer", "is missing; ImagInfo needs a SlidingWindowInferer with its roi_size")
    if _target(node, "inferer", config, "monai.inferers") != "SlidingWindowInferer":
        raise config.fail("inferer._target_", f"is {node['_target_']!r}; only SlidingWindowInferer can be mapped")
    args = _arguments(node)
    known = {"roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval"}
    for key in args:
        if key not in known | _INFERER_EXECUTION_KEYS:
            raise config.fail(f"inferer.{key}", "cannot be mapped onto ImagInfo's sliding window")
    roi = args.get("roi_size")
    if not isinstance(roi, list) or len(roi) != 3:
        raise config.fail("inferer.roi_size", f"must list three sizes in voxels, got {roi!r}")
    for key in ("overlap", "sigma_scale"):
        if isinstance(args.get(key), list):
            raise config.fail(f"inferer.{key}", "differs per axis; ImagInfo takes one value")
    # MONAI's defaults where a key is absent, so that the bundle runs as MONAI runs it.
    return {
        "roi_size": roi,
        "overlap": args.get("overlap", 0.25),
        "blend_mode": args.get("mode", "constant"),
        "sigma_scale": args.get("sigma_scale", 0.125),
        "sw_batch_size": args.get("sw_batch_size", 1),
        "padding_mode": args.get("padding_mode", "constant"),
        "padding_value": args.get("cval", 0.0),
    }


def _postprocessing(config: _Config, label_values: Sequence[int]) -> dict:
    post: dict[str, Any] = {"activation": "none", "decision": "argmax", "thresholds": None}
    post.update({"largest_component": [], "min_component_volume_ml": 0.0})
    transforms = _transforms(config, "postprocessing")
    if not transforms:
        post["activation"] = "softmax"
    for where, name, args in transforms:
        if name in _PASSIVE_POST:
            continue
        if name in ("Activationsd", "Activations"):
            softmax, sigmoid = bool(args.get("softmax")), bool(args.get("sigmoid"))
            if (softmax and sigmoid) or args.get("other") is not None:
                raise config.fail(where, "must apply softmax or sigmoid only")
            post["activation"] = "softmax" if softmax else "sigmoid" if sigmoid else "none"
        elif name in ("AsDiscreted", "AsDiscrete"):
            if args.get("argmax"):
                post["decision"] = "argmax"
            elif isinstance(args.get("threshold"), int | float) and not isinstance(args.get("threshold"), bool):
                post["decision"] = "thresholds"
                post["thresholds"] = {str(value): float(args["threshold"]) for value in label_values}
            else:
                raise config.fail(where, "must take argmax or a threshold to be mapped")
        elif name in ("KeepLargestConnectedComponentd", "KeepLargestConnectedComponent"):
            applied = args.get("applied_labels")
            applied = [applied] if isinstance(applied, int) else applied
            if not isinstance(applied, list):
                raise config.fail(f"{where}.applied_labels", "must list the labels (ImagInfo keeps them one by one)")
            if args.get("independent", True) is not True or args.get("connectivity") not in (None, 3):
                raise config.fail(where, "can be mapped only with independent=true and full connectivity")
            post["largest_component"] = applied
        elif name in ("RemoveSmallObjectsd", "RemoveSmallObjects"):
            if not args.get("by_measure"):
                raise config.fail(f"{where}.by_measure", "must be true (min_size in mm³) to be mapped")
            post["min_component_volume_ml"] = _number(config, f"{where}.min_size", args.get("min_size")) / 1000.0
        else:
            raise config.fail(where, f"is {name}, which ImagInfo cannot map onto its postprocessing")
    return post


def _nested(metadata: _Config, *keys: str) -> Any:
    """``metadata[keys[0]][keys[1]]...``; an empty object where a level is absent or not an object."""
    node: Any = metadata.get(keys[0], {})
    for key in keys[1:]:
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    return node


def _channel_def(metadata: _Config) -> dict[int, str]:
    channels = _nested(metadata, "network_data_format", "outputs", "pred", "channel_def")
    if not isinstance(channels, Mapping) or not channels:
        raise metadata.fail(
            "network_data_format.outputs.pred.channel_def", "is missing; ImagInfo needs the name of each channel"
        )
    try:
        return {int(k): str(v) for k, v in channels.items()}
    except ValueError:
        raise metadata.fail(
            "network_data_format.outputs.pred.channel_def", "must map channel numbers to names"
        ) from None


def _labels(metadata: _Config, block: Mapping[str, Any], decision: str) -> list[dict]:
    channels = _channel_def(metadata)
    offset = 0 if decision == "argmax" else 1  # label value of channel c
    if "labels" not in block:
        values = sorted(c + offset for c in channels if c + offset > 0)
        return [
            {"value": v, "name": channels[v - offset], "color": PALETTE[(v - 1) % len(PALETTE)], "terminology": {}}
            for v in values
        ]
    labels = block["labels"]
    if not isinstance(labels, list):
        raise metadata.fail("imaginfo.labels", "must be a list of labels")
    for number, label in enumerate(labels):
        value = label.get("value") if isinstance(label, Mapping) else None
        if isinstance(value, int) and channels.get(value - offset) != label.get("name"):
            raise metadata.fail(
                f"imaginfo.labels[{number}].name",
                f"is {label.get('name')!r}, but channel_def names channel {value - offset} "
                f"{channels.get(value - offset)!r}; make them equal",
            )
    return labels


def _license(bundle: Path, metadata: _Config, block: Mapping[str, Any]) -> str:
    for value in (block.get("license"), metadata.get("license")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    for name in LICENSE_FILES:
        path = bundle / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            flat = " ".join(text.split())
            known = (
                ("Apache-2.0", ("Apache License", "Version 2.0")),
                ("MIT", ("Permission is hereby granted, free of charge",)),
                ("CC-BY-NC-SA-4.0", ("Attribution-NonCommercial-ShareAlike 4.0",)),
                ("CC-BY-NC-4.0", ("Attribution-NonCommercial 4.0",)),
                ("CC-BY-4.0", ("Creative Commons Attribution 4.0",)),
                ("BSD-3-Clause", ("Redistribution and use in source and binary forms", "Neither the name")),
            )
            for spdx, phrases in known:
                if all(phrase in flat for phrase in phrases):
                    return spdx
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            if first:
                return f"see the bundle's {name}: {first[:80]}"
    raise metadata.fail("license", "is missing and the bundle has no LICENSE file; state the model's licence")


def _provenance(metadata: _Config, block: Mapping[str, Any]) -> dict:
    if "provenance" in block:
        return block["provenance"]
    provenance = {"source": "MONAI bundle"}
    for key in ("name", "version", "authors", "copyright", "monai_version", "pytorch_version", "references"):
        value = metadata.get(key)
        if value not in (None, "", []):
            provenance[f"bundle_{key}" if key in ("name", "version") else key] = value
    return provenance


def _network(config: _Config, has_state: bool) -> tuple[dict, dict]:
    """The entry's ``network`` and the network's arguments."""
    node = config.get("network_def")
    if node is None:
        if has_state:
            raise config.fail("network_def", "is missing; a state dict needs the network it belongs to")
        return {"format": "torchscript"}, {}
    name = _target(node, "network_def", config, "monai.networks.nets")
    from ImagInfoExtension.segmentation.weights import WeightsError, network_class

    try:
        network_class(name)
    except WeightsError as error:
        raise config.fail("network_def._target_", str(error)) from None
    args = _arguments(node)
    for key, value in args.items():
        if "_target_" in json.dumps(value):
            raise config.fail(f"network_def.{key}", "builds another object; ImagInfo maps plain values only")
    if not has_state:
        return {"format": "torchscript"}, args
    return {"format": "monai", "class": name, "args": args}, args


def _resource_folder(bundle: Path) -> str | None:
    """The bundle's folder relative to a resources directory (a shipped bundle), else None."""
    resolved = bundle.resolve()
    for directory in resources_directories():
        try:
            return resolved.relative_to(directory.resolve()).as_posix()
        except ValueError:
            continue
    return None


def entry_from_bundle(bundle_dir: str | Path, model_id: str, version: str | None = None) -> ModelEntry:
    """The catalogue entry of a MONAI bundle folder (see the module's docstring for what is read).

    Parameters
    ----------
    bundle_dir : path
        The bundle folder (holding ``configs/`` and ``models/``).
    model_id : str
        The catalogue id to give it.
    version : str, optional
        Instead of metadata's ``version`` (a semantic version such as ``1.0.0``).

    Raises
    ------
    BundleError
        Naming the file and the key that cannot be mapped.
    """
    from ImagInfoExtension.segmentation.weights import sha256_file

    bundle = Path(bundle_dir)
    metadata_path = bundle / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise BundleError(f"{bundle}: is not a MONAI bundle: configs/metadata.json is missing")
    metadata = _Config(_read_document(metadata_path), str(metadata_path))
    if not isinstance(metadata.data, Mapping):
        raise BundleError(f"{metadata_path}: must hold a JSON object")
    config_path = next((bundle / name for name in INFERENCE_CONFIGS if (bundle / name).is_file()), None)
    if config_path is None:
        raise BundleError(f"{bundle}: configs/inference.json (or .yaml) is missing")
    document = _read_document(config_path)
    if not isinstance(document, Mapping):
        raise BundleError(f"{config_path}: must hold an object of config items")
    config = _Config(document, str(config_path))

    block = metadata.data.get("imaginfo", {})
    if not isinstance(block, Mapping):
        raise metadata.fail("imaginfo", "must be an object")
    for key in block:
        if key not in IMAGINFO_KEYS:
            raise metadata.fail(f"imaginfo.{key}", f"is not a key of the imaginfo block ({', '.join(IMAGINFO_KEYS)})")

    weights_file, weights_format = next(
        ((name, kind) for name, kind in WEIGHT_FILES if (bundle / name).is_file()), (None, None)
    )
    if weights_file is None:
        raise BundleError(f"{bundle}: holds no weights (models/model.pt, models/model.ts or models/model.safetensors)")
    network, args = _network(config, has_state=weights_format != "torchscript")

    version = version or metadata.get("version")
    if not isinstance(version, str):
        raise metadata.fail("version", "is missing; give the model's version (e.g. --version 1.0.0)")
    try:
        semantic_version_key(version)
    except CatalogueError:
        raise metadata.fail(
            "version", f"is {version!r}, not MAJOR.MINOR.PATCH; give one with --version (e.g. 1.0.0)"
        ) from None

    image = _nested(metadata, "network_data_format", "inputs", "image")
    image = image if isinstance(image, Mapping) else {}
    modality = block.get("modality") or image.get("modality")
    if not isinstance(modality, str) or not modality:
        raise metadata.fail("network_data_format.inputs.image.modality", "is missing; state the input modality")
    channels = args.get("in_channels", image.get("num_channels"))
    if image.get("num_channels") not in (None, channels):
        raise metadata.fail(
            "network_data_format.inputs.image.num_channels",
            f"is {image['num_channels']}, but network_def.in_channels is {channels}",
        )
    if channels is None:
        raise metadata.fail("network_data_format.inputs.image.num_channels", "is missing")

    if "postprocessing" in block:
        postprocessing = block["postprocessing"]
        decision = postprocessing.get("decision", "argmax") if isinstance(postprocessing, Mapping) else "argmax"
    else:
        decision = "argmax"
    labels = _labels(metadata, block, decision)
    if "postprocessing" not in block:
        postprocessing = _postprocessing(config, [label.get("value") for label in labels])

    stated = block.get("preprocessing", {})
    tolerance = stated.get("spacing_tolerance", 0.02) if isinstance(stated, Mapping) else 0.02
    preprocessing = _preprocessing(config, tolerance)
    _check_stated_preprocessing(metadata, stated, preprocessing)
    data = {
        "id": model_id,
        "version": version,
        "title": block.get("title") or metadata.get("name") or model_id,
        "description": block.get("description", metadata.get("description", "")),
        "task": block.get("task", "segmentation"),
        "modality": _MODALITIES.get(modality.upper(), modality.upper()),
        "input_channels": channels,
        "preprocessing": preprocessing,
        "network": network,
        "inference": _inference(config),
        "postprocessing": postprocessing,
        "labels": labels,
        "license": _license(bundle, metadata, block),
        "provenance": _provenance(metadata, block),
        "reported_metrics": block.get("reported_metrics", {}),
        "weights": {
            "file": weights_file,
            "format": weights_format,
            "sha256": sha256_file(bundle / weights_file),
            "size_bytes": (bundle / weights_file).stat().st_size,
            "urls": block.get("urls", []),
            "bundle": _resource_folder(bundle),
        },
        "requirements": block.get("requirements", {}),
    }
    try:
        entry = entry_from_json(data, f"the bundle {bundle}")
    except CatalogueError as error:
        raise BundleError(f"{error} (from {metadata_path.name} and {config_path.name})") from None
    out_channels = args.get("out_channels")
    if out_channels is not None and out_channels != entry.output_channels:
        raise config.fail(
            "network_def.out_channels",
            f"is {out_channels}, but {len(entry.labels)} label(s) under {entry.postprocessing.decision} need "
            f"{entry.output_channels} channels",
        )
    return entry


# --- import -------------------------------------------------------------------------------------


def import_model(path: str | Path, model_id: str, version: str | None = None) -> ModelEntry:
    """Import a MONAI bundle (folder, ``.zip`` or ``.tar.gz``) into the user catalogue and the weights cache.

    The weights are loaded once, safely, before anything is written: a file that
    cannot be (a pickle that would run code, a damaged file, weights that do not fit
    the network) is refused and nothing is added. A plain weights file given for an
    id the catalogue already holds is side-loaded into the cache instead (offline use).

    Returns
    -------
    ModelEntry
        The entry added (weights in ``<cache>/<id>/<version>/``).

    Raises
    ------
    BundleError, WeightsError
        With the reason and the fix; the catalogue and the cache are left as they were.
    """
    from ImagInfoExtension.segmentation import weights

    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path} does not exist; give a MONAI bundle folder, .zip or .tar.gz")
    if path.is_dir():
        return _import_folder(weights.bundle_root(path), model_id, version)
    name = path.name.lower()
    if name.endswith((".zip", ".tar.gz", ".tgz")):
        scratch = Path(tempfile.mkdtemp(prefix=weights.PARTIAL_PREFIX))
        try:
            root = weights.bundle_root(weights.unpack_archive(path, scratch / "bundle"))
            return _import_folder(root, model_id, version)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    from ImagInfoExtension.segmentation.catalogue import load_catalogue

    try:
        entry = load_catalogue().get(model_id, version)
    except CatalogueError as error:
        raise BundleError(
            f"{path} is a single file: it can only be side-loaded as the weights of a model the catalogue holds, "
            f"and {error}"
        ) from None
    weights.side_load_weights(entry, path)
    return entry


def _import_folder(bundle: Path, model_id: str, version: str | None) -> ModelEntry:
    from ImagInfoExtension.segmentation import weights

    entry = entry_from_bundle(bundle, model_id, version)
    entry = replace(entry, weights=replace(entry.weights, bundle=None))  # the imported copy lives in the cache
    source = bundle / entry.weights.file
    data = source.read_bytes()
    if len(data) != entry.weights.size_bytes or hashlib.sha256(data).hexdigest() != entry.weights.sha256:
        raise BundleError(f"{source} changed while it was imported; import it again")
    weights.network_from_bytes(entry, data, str(source))  # refused files stop here, before anything is written
    if any(other.key == entry.key and other != entry for other in read_catalogue_file(shipped_catalogue_path())):
        raise BundleError(f"{entry.key} is a shipped model; import yours under another id or version")
    target = weights.cache_path(entry)
    existed = target.is_file()
    installed = weights.side_load_weights(entry, source)
    try:
        add_user_entry(entry)
    except BaseException:
        if not existed:
            installed.unlink(missing_ok=True)
        raise
    return entry
