"""The model catalogue, its JSON schema, the weights cache, downloads, safe loading and MONAI bundle import."""

from __future__ import annotations

import copy
import hashlib
import http.server
import io
import json
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from ImagInfoExtension.segmentation import bundle as bundles
from ImagInfoExtension.segmentation import catalogue, weights
from ImagInfoExtension.segmentation.catalogue import CatalogueError, entry_from_json
from ImagInfoExtension.segmentation.weights import WeightsError

REPOSITORY = Path(__file__).resolve().parent.parent
UNET_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
}


@pytest.fixture(scope="module")
def torch():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_VARIABLE, str(folder))
    return folder


def files_under(folder: Path) -> list[Path]:
    """Every file and every empty folder under ``folder``."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() or (p.is_dir() and not any(p.iterdir())))


def example_json(data: bytes = b"weights", file: str = "model.pt", fmt: str = "state_dict") -> dict:
    """A catalogue entry using every key."""
    return {
        "id": "example-model",
        "version": "1.2.0",
        "title": "An example",
        "description": "every key of an entry",
        "task": "segmentation",
        "modality": "CT",
        "input_channels": 1,
        "preprocessing": {
            "orientation": "RAS",
            "target_spacing_mm": [0.9, 0.9, 1.25],
            "spacing_tolerance": 0.02,
            "intensity": {"clip_min": -1000.0, "clip_max": 400.0, "normalisation": "range", "mean": None, "sd": None},
        },
        "network": {"format": "monai", "class": "UNet", "args": dict(UNET_ARGS)},
        "inference": {
            "roi_size": [16, 16, 16],
            "overlap": 0.25,
            "blend_mode": "gaussian",
            "sigma_scale": 0.125,
            "sw_batch_size": 2,
            "padding_mode": "constant",
            "padding_value": 0.0,
        },
        "postprocessing": {
            "activation": "softmax",
            "decision": "argmax",
            "thresholds": None,
            "largest_component": [2],
            "min_component_volume_ml": 0.5,
        },
        "labels": [
            {
                "value": 1,
                "name": "vessel r=0.1 mm",
                "color": "#ff0000",
                "terminology": {
                    "category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
                    "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"},
                },
            },
            {"value": 2, "name": "vessel r=1 mm", "color": "#00FF00", "terminology": {}},
        ],
        "license": "Apache-2.0",
        "provenance": {"trained_by": "ImagInfo", "seed": 0},
        "reported_metrics": {"dice": {"1.0": 0.93}},
        "weights": {
            "file": file,
            "format": fmt,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "urls": [],
            "bundle": None,
        },
        "requirements": {
            "reference_shape": [250, 184, 108],
            "memory_mb": {"cpu": 900, "gpu": 600},
            "time_s": {"cpu": 25.0, "gpu": None},
        },
    }


def entry_for(data: bytes, **changes) -> catalogue.ModelEntry:
    document = example_json(data)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            document[section][name] = value
        else:
            document[section] = value
    return entry_from_json(document)


def as_document(*entries: dict) -> dict:
    return {"schema_version": 1, "models": list(entries)}


# --- the catalogue and its schema ------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPOSITORY / "Resources" / "models.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_shipped_entry_is_valid_and_matches_its_bundle():
    """Holds for every entry of Resources/models.json (and for none)."""
    path = REPOSITORY / "Resources" / "models.json"
    document = json.loads(path.read_text())
    assert document["schema_version"] == 1
    assert catalogue.schema_errors(document) in ([], None)
    entries = catalogue.read_catalogue_file(path)
    assert len(entries) == len(document["models"])
    assert catalogue.shipped_catalogue_path() == path
    for entry in entries:
        assert entry.to_json() == entry_from_json(entry.to_json()).to_json()
        if entry.weights.bundle is None:
            continue
        folder = REPOSITORY / "Resources" / entry.weights.bundle
        file = folder / entry.weights.file
        assert file.is_file(), f"{entry.key}: {file} is missing"
        assert file.stat().st_size == entry.weights.size_bytes
        assert weights.sha256_file(file) == entry.weights.sha256
        assert weights.shipped_path(entry) == file
        assert bundles.entry_from_bundle(folder, entry.id) == entry


def test_a_full_entry_round_trips_and_follows_the_schema(tmp_path):
    document = example_json()
    entry = entry_from_json(document)
    assert entry.to_json() == document
    assert entry.output_channels == 3
    assert entry.labels[0].color_rgb == (1.0, 0.0, 0.0)
    assert catalogue.schema_errors(as_document(document)) == []
    torchscript = example_json(fmt="torchscript")
    torchscript["network"] = {"format": "torchscript"}
    thresholds = example_json()
    thresholds["postprocessing"].update(activation="sigmoid", decision="thresholds", thresholds={"1": 0.5, "2": 0.4})
    for good in (torchscript, thresholds):
        assert entry_from_json(good).to_json() == good
        assert catalogue.schema_errors(as_document(good)) == []
    path = tmp_path / "models.json"
    path.write_text(json.dumps(as_document(document, torchscript | {"version": "1.10.0"})))
    assert [e.key for e in catalogue.load_catalogue([path])] == ["example-model@1.2.0", "example-model@1.10.0"]


def _without(path: str):
    def change(document):
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return change


def _set(path: str, value):
    def change(document):
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return change


BAD_ENTRIES = {
    "short sha256": (_set("weights.sha256", "abc123"), "sha256"),
    "non-hex sha256": (_set("weights.sha256", "g" * 64), "sha256"),
    "unknown network format": (_set("network.format", "onnx"), "format"),
    "unknown weights format": (_set("weights.format", "pickle"), "format"),
    "missing sha256": (_without("weights.sha256"), "sha256"),
    "missing weights": (_without("weights"), "weights"),
    "missing roi_size": (_without("inference.roi_size"), "roi_size"),
    "missing labels": (_without("labels"), "labels"),
    "missing license": (_without("license"), "license"),
    "misspelt key": (_set("preprocessing.target_spacing", [1, 1, 1]), "target_spacing"),
    "unknown top-level key": (_set("weigths", {}), "weigths"),
    "bad colour": (_set("labels.0.color", "red"), "color"),
    "label 0": (_set("labels.0.value", 0), "value"),
    "not a semantic version": (_set("version", "1.0"), "version"),
    "bad orientation": (_set("preprocessing.orientation", "RAR"), "orientation"),
    "path out of the bundle": (_set("weights.file", "../../etc/passwd"), "file"),
    "absolute bundle": (_set("weights.bundle", "/opt/models"), "bundle"),
    "module path as class": (_set("network.class", "os.system"), "class"),
    "torchscript weights for a monai network": (_set("weights.format", "torchscript"), "weights"),
    "overlap of 1": (_set("inference.overlap", 1.0), "overlap"),
    "padding mode": (_set("inference.padding_mode", "zeros"), "padding_mode"),
    "range without clip_max": (_set("preprocessing.intensity.clip_max", None), "normalisation"),
    "negative size": (_set("weights.size_bytes", -1), "size_bytes"),
    "boolean channels": (_set("input_channels", True), "input_channels"),
    "ftp url": (_set("weights.urls", ["ftp://host/model.pt"]), "urls"),
    "terminology without type": (_without("labels.0.terminology.type"), "type"),
    "unknown device": (_set("requirements.time_s", {"tpu": 1.0}), "time_s"),
    "thresholds missing": (_set("postprocessing.decision", "thresholds"), "thresholds"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_bad_entries_are_refused_by_the_reader_and_the_schema_alike(case):
    change, key = BAD_ENTRIES[case]
    document = example_json()
    change(document)
    with pytest.raises(CatalogueError) as refused:
        entry_from_json(document, "test")
    assert f"'{key}'" in str(refused.value)
    errors = catalogue.schema_errors(as_document(document))
    assert errors is None or errors, f"the schema accepts what the reader refuses ({case})"


def test_catalogue_files_are_checked_whole(tmp_path):
    entry = example_json()
    cases = {
        "newer.json": ({"schema_version": 2, "models": []}, "newer ImagInfo"),
        "twice.json": (as_document(entry, entry), "listed twice"),
        "broken.json": ("{", "not valid JSON"),
        "extra.json": ({"schema_version": 1, "models": [], "note": 1}, "'note'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(CatalogueError, match=message):
            catalogue.read_catalogue_file(path)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(as_document(entry)))
    changed = copy.deepcopy(entry)
    changed["title"] = "another"
    second.write_text(json.dumps(as_document(changed)))
    with pytest.raises(CatalogueError, match="different contents"):
        catalogue.load_catalogue([first, second])
    second.write_text(json.dumps(as_document(entry)))
    assert len(catalogue.load_catalogue([first, second])) == 1


def test_get_gives_the_newest_semantic_version_and_names_what_exists():
    versions = ["1.2.0", "1.10.0", "1.10.0-rc.1", "1.9.9", "0.1.0"]
    entries = [entry_from_json(example_json() | {"version": v}) for v in versions]
    other = entry_from_json(example_json() | {"id": "other-model"})
    found = catalogue.Catalogue([*entries, other])
    assert found.versions("example-model") == ["0.1.0", "1.2.0", "1.9.9", "1.10.0-rc.1", "1.10.0"]
    assert found.get("example-model").version == "1.10.0"
    assert found.get("example-model", "1.2.0").version == "1.2.0"
    assert found.get("example-model@1.9.9").version == "1.9.9"
    assert "example-model@0.1.0" in found and "other-model" in found and "nothing" not in found
    assert found.ids() == ["example-model", "other-model"]
    with pytest.raises(CatalogueError, match="did you mean 'example-model'.*known models: example-model, other-model"):
        found.get("example-modle")
    with pytest.raises(CatalogueError, match="has no version 3.0.0; its versions: 0.1.0, 1.2.0"):
        found.get("example-model", "3.0.0")
    assert sorted(
        ["1.0.0-alpha.beta", "1.0.0-alpha", "1.0.0", "1.0.0-alpha.1", "1.0.0-beta.11", "1.0.0-beta.2"],
        key=catalogue.semantic_version_key,
    ) == [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0",
    ]  # semver.org's own precedence example


def test_user_catalogue_is_written_atomically_and_replaces_the_same_version(cache):
    first = entry_from_json(example_json())
    path = catalogue.add_user_entry(first)
    assert path == cache / "catalogue.json"
    newer = entry_from_json(example_json() | {"title": "replaced"})
    catalogue.add_user_entry(newer)
    catalogue.add_user_entry(entry_from_json(example_json() | {"version": "2.0.0"}))
    loaded = catalogue.load_catalogue()
    assert loaded.get("example-model", "1.2.0").title == "replaced"
    assert loaded.get("example-model").version == "2.0.0"
    assert loaded.source("example-model@2.0.0") == path
    assert files_under(cache) == [path]  # no temporary file left behind
    assert catalogue.schema_errors(json.loads(path.read_text())) in ([], None)


# --- the cache ------------------------------------------------------------------------------------


def test_cache_directory_follows_the_variable_and_the_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGINFO_MODEL_CACHE", str(tmp_path / "mine"))
    assert weights.cache_directory() == tmp_path / "mine"
    monkeypatch.delenv("IMAGINFO_MODEL_CACHE")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_directory() == tmp_path / "xdg" / "imaginfo" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert weights.cache_directory() == tmp_path / "home" / ".cache" / "imaginfo" / "models"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert weights.cache_directory() == tmp_path / "home" / "Library" / "Caches" / "imaginfo" / "models"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert weights.cache_directory() == tmp_path / "local" / "imaginfo" / "models"


def test_verify_remembers_digests_by_size_and_time(cache, monkeypatch, tmp_path):
    data = os.urandom(4096)
    entry = entry_for(data)
    assert not weights.verify_weights(entry).present
    source = tmp_path / "model.pt"
    source.write_bytes(data)
    installed = weights.side_load_weights(entry, source)
    assert installed == cache / "example-model" / "1.2.0" / "model.pt"
    assert weights.weights_location(entry) == installed
    calls = []
    original = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda path: calls.append(path) or original(path))
    assert weights.verify_weights(entry).ok and weights.verify_weights(entry).ok
    assert len(calls) <= 1  # hashed at most once (side-loading may have hashed it already)
    installed.write_bytes(bytes(len(data)))  # same size, other bytes, new modification time
    os.utime(installed, ns=(1, 1))
    status = weights.verify_weights(entry)
    assert status.present and status.size_ok and not status.sha256_ok
    assert "do not match" in str(status) and entry.weights.sha256 in str(status)


def test_side_loading_checks_the_file_first(cache, tmp_path):
    data = os.urandom(2048)
    entry = entry_for(data)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(os.urandom(2048))
    with pytest.raises(WeightsError, match=f"expected {entry.weights.sha256}"):
        weights.side_load_weights(entry, wrong)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.side_load_weights(entry, tmp_path / "absent.pt")
    assert files_under(cache) == []
    with pytest.raises(WeightsError, match="not present.*imaginfo models fetch example-model@1.2.0"):
        weights.load_network(entry)


# --- downloads from a local server ------------------------------------------------------------------

PAYLOAD = os.urandom(2_500_000)  # three chunks of progress


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


ROUTES = {
    "/good.pt": (PAYLOAD, len(PAYLOAD)),
    "/truncated.pt": (PAYLOAD[: len(PAYLOAD) // 2], len(PAYLOAD)),  # announces all, sends half, hangs up
    "/short.pt": (PAYLOAD[:-10], len(PAYLOAD) - 10),
    "/wrong.pt": (bytes(reversed(PAYLOAD)), len(PAYLOAD)),
    "/long.pt": (PAYLOAD + PAYLOAD, 2 * len(PAYLOAD)),
    "/bundle.zip": (_zip({"tiny/configs/metadata.json": b"{}", "tiny/models/model.pt": PAYLOAD}), None),
    "/escape.zip": (_zip({"../../outside.pt": PAYLOAD}), None),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802  (http.server's name)
        _Handler.requests.append(self.path)
        if self.path == "/stall.pt":
            time.sleep(2.0)
        if self.path not in ROUTES:
            self.send_error(404)
            return
        body, announced = ROUTES[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if announced is None else announced))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_good_download_is_cached_with_progress_to_the_total(cache, server):
    entry = entry_for(PAYLOAD, weights__urls=[f"{server}/good.pt"])
    reports = []
    path = weights.fetch_weights(entry, progress=lambda done, total, message: reports.append((done, total)))
    assert path == weights.cache_path(entry) and path.read_bytes() == PAYLOAD
    assert files_under(cache) == [path]
    assert reports[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert {total for _, total in reports} == {len(PAYLOAD)}
    assert [done for done, _ in reports] == sorted(done for done, _ in reports) and len(reports) >= 4
    before = len(_Handler.requests)
    assert weights.fetch_weights(entry) == path  # verified weights are not downloaded again
    assert len(_Handler.requests) == before
    assert weights.verify_weights(entry).ok


@pytest.mark.parametrize(
    "route, message",
    [
        ("/truncated.pt", f"truncated: got {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"),
        ("/short.pt", f"got {len(PAYLOAD) - 10} bytes, expected {len(PAYLOAD)}"),
        ("/wrong.pt", "got sha256 [0-9a-f]{64}, expected " + hashlib.sha256(PAYLOAD).hexdigest()),
        ("/absent.pt", "404"),
        ("/long.pt", f"sent more than the {len(PAYLOAD)} bytes expected"),
    ],
)
def test_a_failed_download_leaves_nothing(cache, server, route, message):
    entry = entry_for(PAYLOAD, weights__urls=[f"{server}{route}"])
    with pytest.raises(WeightsError, match=message) as failed:
        weights.fetch_weights(entry)
    assert "Nothing was kept" in str(failed.value) and "--file FILE" in str(failed.value)
    assert files_under(cache) == []
    assert not weights.verify_weights(entry).present


def test_a_cancelled_or_stalled_download_leaves_nothing(cache, server):
    from ImagInfoExtension.progress import Cancelled

    entry = entry_for(PAYLOAD, weights__urls=[f"{server}/good.pt"])

    def cancel(done, total, message):
        if done > 0:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        weights.fetch_weights(entry, progress=cancel)
    assert files_under(cache) == []
    started = time.perf_counter()
    with pytest.raises(WeightsError, match="timed out"):
        weights.fetch_weights(entry, url=f"{server}/stall.pt", timeout_s=0.3)
    assert time.perf_counter() - started < 1.5
    assert files_under(cache) == []


def test_download_tries_the_next_url_and_takes_file_urls(cache, server, tmp_path):
    entry = entry_for(PAYLOAD, weights__urls=[f"{server}/wrong.pt", f"{server}/good.pt"])
    assert weights.fetch_weights(entry).read_bytes() == PAYLOAD
    weights.cache_path(entry).unlink()
    local = tmp_path / "local.pt"
    local.write_bytes(PAYLOAD)
    assert weights.fetch_weights(entry, url=local.as_uri()).read_bytes() == PAYLOAD
    with pytest.raises(WeightsError, match="names no download URL"):
        weights.fetch_weights(entry_for(os.urandom(8)))


def test_bundle_archives_are_checked_then_unpacked(cache, server):
    entry = entry_for(PAYLOAD, weights__file="models/model.pt")
    archive_sha256 = hashlib.sha256(ROUTES["/bundle.zip"][0]).hexdigest()
    with pytest.raises(WeightsError, match=f"the archive's sha256 is {archive_sha256}"):
        weights.fetch_weights(entry, url=f"{server}/bundle.zip#sha256={'0' * 64}")
    assert files_under(cache) == []
    with pytest.raises(WeightsError, match="outside the folder"):
        weights.fetch_weights(entry, url=f"{server}/escape.zip")
    assert files_under(cache) == [] and not (cache.parent / "outside.pt").exists()
    path = weights.fetch_weights(entry, url=f"{server}/bundle.zip#sha256={archive_sha256}")
    assert path == cache / "example-model" / "1.2.0" / "model.pt" and path.read_bytes() == PAYLOAD
    assert files_under(cache) == [path]


def test_tar_bundles_unpack_and_links_are_refused(cache, tmp_path):
    import tarfile

    entry = entry_for(PAYLOAD, weights__file="models/model.pt")
    good, linked = tmp_path / "good.tar.gz", tmp_path / "linked.tar.gz"
    with tarfile.open(good, "w:gz") as archive:
        member = tarfile.TarInfo("models/model.pt")
        member.size = len(PAYLOAD)
        archive.addfile(member, io.BytesIO(PAYLOAD))
    with tarfile.open(linked, "w:gz") as archive:
        member = tarfile.TarInfo("models/model.pt")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(member)
    with pytest.raises(WeightsError, match="'models/model.pt' is not a plain file"):
        weights.fetch_weights(entry, url=linked.as_uri())
    assert files_under(cache) == []
    assert weights.fetch_weights(entry, url=good.as_uri()).read_bytes() == PAYLOAD
    assert files_under(cache) == [weights.cache_path(entry)]


# --- safe loading ---------------------------------------------------------------------------------


class Payload:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def tiny(torch, tmp_path_factory):
    """A small MONAI UNet, its state dict and a MONAI bundle of it."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(**UNET_ARGS).eval()
    folder = tmp_path_factory.mktemp("tiny") / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    write_bundle_configs(folder)
    return network, folder


def write_bundle_configs(folder: Path, imaginfo: dict | None = None, **config_changes) -> None:
    metadata = {
        "version": "0.3.1",
        "name": "tiny vessels",
        "description": "a test bundle",
        "authors": "ImagInfo tests",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "channel_def": {"0": "background", "1": "thin", "2": "thick"}}},
        },
    }
    if imaginfo is not None:
        metadata["imaginfo"] = imaginfo
    config = {
        "imports": ["$import torch"],
        "device": "$torch.device('cpu')",
        "num_classes": 3,
        "network_def": {"_target_": "monai.networks.nets.UNet", **UNET_ARGS, "out_channels": "@num_classes"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [0.8, 0.8, 1.5], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1000,
                    "a_max": 400,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing"},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [2]},
            ],
        },
    }
    config.update(config_changes)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "LICENSE").write_text(
        'Licensed under the Apache License, Version 2.0 (the "License");\nyou may not use this file except ...'
    )


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(torch, cache, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"model.0.conv.weight": torch.zeros(1), "trap": Payload(marker)}, buffer)
    data = buffer.getvalue()
    entry = entry_for(data)  # its correct hash: the check that refuses it is not the hash
    weights.side_load_weights(entry, _write(tmp_path / "model.pt", data))
    with pytest.raises(WeightsError) as refused:
        weights.load_network(entry)
    message = str(refused.value)
    assert "refused" in message and "not a plain weights file" in message
    assert "never loads unverified pickles" in message and "posix.system" in message
    assert not marker.exists()
    # The control: an unrestricted load of the same bytes does run the command.
    control = tmp_path / "control"
    torch.save({"trap": Payload(control)}, buffer := io.BytesIO())
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert control.exists()


def test_importing_a_bundle_with_such_a_pickle_adds_nothing(torch, cache, tmp_path, tiny):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    write_bundle_configs(folder)
    state = dict(tiny[0].state_dict()) | {"trap": Payload(marker)}
    torch.save(state, folder / "models" / "model.pt")
    with pytest.raises(WeightsError, match="refused: it is not a plain weights file"):
        bundles.import_model(folder, "evil-model")
    assert not marker.exists()
    assert files_under(cache) == []  # neither weights nor a user catalogue


def test_damaged_and_unfitting_weights_say_why(torch, cache, tmp_path, tiny):
    network, folder = tiny
    good = (folder / "models" / "model.pt").read_bytes()
    damaged = good[: len(good) // 2]
    entry = entry_for(damaged, network__args=UNET_ARGS)
    weights.side_load_weights(entry, _write(tmp_path / "damaged.pt", damaged))
    with pytest.raises(WeightsError, match="damaged or not a weights file"):
        weights.load_network(entry)
    weights.cache_path(entry).unlink()
    wider = entry_for(good, network__args=UNET_ARGS | {"out_channels": 4})
    weights.side_load_weights(wider, _write(tmp_path / "model.pt", good))
    with pytest.raises(WeightsError, match="does not fit the network UNet.*size mismatch"):
        weights.load_network(wider)
    deeper = entry_for(good, network__args=UNET_ARGS | {"num_res_units": 2})
    with pytest.raises(WeightsError, match="Missing key"):
        weights.load_network(deeper)
    for name in ("Module", "unet", "nets", "_Private"):
        with pytest.raises(WeightsError, match="not a network class of monai.networks.nets"):
            weights.network_class(name)
    assert weights.network_class("UNet").__name__ == "UNet"
    tensors = {f"{k}": v for k, v in network.state_dict().items()}
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()})
    as_safetensors = entry_for(data, weights__format="safetensors", weights__file="model.safetensors")
    weights.side_load_weights(as_safetensors, _write(tmp_path / "model.safetensors", data))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(weights.load_network(as_safetensors)(x), network(x))


def test_torchscript_loads_only_when_its_hash_matches(torch, cache, tmp_path, tiny, monkeypatch):
    network = tiny[0]
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(network, torch.randn(1, 1, 16, 16, 16)), buffer)
    data = buffer.getvalue()
    document = example_json(data, file="model.ts", fmt="torchscript")
    document["network"] = {"format": "torchscript"}
    entry = entry_from_json(document)
    path = weights.side_load_weights(entry, _write(tmp_path / "model.ts", data))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(weights.load_network(entry)(x), network(x), atol=1e-6)
    loads = []
    original = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or original(*a, **k))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit, same size
    with pytest.raises(WeightsError, match=f"do not match.*expected {entry.weights.sha256}.*--file FILE"):
        weights.load_network(entry)
    assert loads == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- MONAI bundles --------------------------------------------------------------------------------


def test_a_bundle_imports_into_an_entry_whose_network_gives_the_same_output(torch, cache, tiny, tmp_path):
    from monai.bundle import ConfigParser

    network, folder = tiny
    entry = bundles.import_model(folder, "tiny-vessels")
    assert entry.key == "tiny-vessels@0.3.1" and entry.license == "Apache-2.0" and entry.modality == "CT"
    assert entry.preprocessing.orientation == "LPS"
    assert entry.preprocessing.target_spacing_mm == (0.8, 0.8, 1.5)
    assert (entry.preprocessing.intensity.clip_min, entry.preprocessing.intensity.clip_max) == (-1000.0, 400.0)
    assert entry.preprocessing.intensity.normalisation == "range"
    assert entry.inference.roi_size == (16, 16, 16) and entry.inference.overlap == 0.5
    assert entry.inference.blend_mode == "constant"  # MONAI's default where the bundle states no mode
    assert entry.postprocessing.activation == "softmax" and entry.postprocessing.largest_component == (2,)
    assert [(label.value, label.name) for label in entry.labels] == [(1, "thin"), (2, "thick")]
    assert entry.network.args["out_channels"] == 3  # the '@num_classes' reference followed
    weights_file = folder / "models" / "model.pt"
    assert entry.weights.sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert entry.weights.size_bytes == weights_file.stat().st_size
    assert catalogue.load_catalogue().get("tiny-vessels") == entry
    assert weights.weights_location(entry) == cache / "tiny-vessels" / "0.3.1" / "model.pt"
    loaded = weights.load_network(entry)
    x = torch.randn(1, 1, 16, 16, 16)
    parser = ConfigParser()
    parser.read_config(folder / "configs" / "inference.json")
    monai_network = parser.get_parsed_content("network_def")  # MONAI's own reading of the same bundle
    monai_network.load_state_dict(torch.load(weights_file, weights_only=True))
    with torch.no_grad():
        expected = network(x)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(monai_network.eval()(x), expected)
    # The same bundle as a .zip, with a YAML config, under a version given on import.
    yaml = pytest.importorskip("yaml")
    config = json.loads((folder / "configs" / "inference.json").read_text())
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as bundle_zip:
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "inference.json":
                bundle_zip.write(path, f"tiny/{path.relative_to(folder).as_posix()}")
        bundle_zip.writestr("tiny/configs/inference.yaml", yaml.safe_dump(config))
    zipped = bundles.import_model(archive, "tiny-vessels", version="0.4.0")
    assert zipped.to_json() | {"version": "0.3.1"} == entry.to_json()
    assert catalogue.load_catalogue().versions("tiny-vessels") == ["0.3.1", "0.4.0"]
    # A plain weights file for a known id is side-loaded.
    weights.cache_path(entry).unlink()
    assert bundles.import_model(weights_file, "tiny-vessels", "0.3.1") == entry
    assert weights.verify_weights(entry).ok


def test_the_imaginfo_block_round_trips(tiny, tmp_path):
    folder = tmp_path / "full"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes((tiny[1] / "models" / "model.pt").read_bytes())
    document = example_json((folder / "models" / "model.pt").read_bytes(), file="models/model.pt")
    document["labels"][0]["name"], document["labels"][1]["name"] = "thin", "thick"
    document["weights"]["urls"] = ["https://example.org/tiny/model.pt"]
    block = {
        key: document[key]
        for key in (
            "title",
            "description",
            "labels",
            "postprocessing",
            "requirements",
            "provenance",
            "reported_metrics",
            "license",
        )
    }
    block |= {
        "id": "example-model",
        "urls": document["weights"]["urls"],
        "modality": "ct",
        "preprocessing": {
            "spacing_tolerance": 0.05,
            "orientation": "LPS",
            "intensity": {"clip_min": -1000, "clip_max": 400, "normalisation": "range"},
        },
    }
    write_bundle_configs(
        folder,
        block,
        inferer={
            "_target_": "SlidingWindowInferer",
            "roi_size": [16, 16, 16],
            "sw_batch_size": 2,
            "mode": "gaussian",
            "overlap": 0.25,
            "sigma_scale": 0.125,
        },
    )
    entry = bundles.entry_from_bundle(folder, "example-model")
    expected = copy.deepcopy(document)
    expected["version"] = "0.3.1"
    expected["preprocessing"].update(orientation="LPS", target_spacing_mm=[0.8, 0.8, 1.5], spacing_tolerance=0.05)
    assert entry.to_json() == expected
    block["preprocessing"]["target_spacing_mm"] = [0.9, 0.9, 1.25]
    write_bundle_configs(folder, block)
    with pytest.raises(CatalogueError, match="'imaginfo.preprocessing.target_spacing_mm' is .*inference.json decides"):
        bundles.entry_from_bundle(folder, "example-model")
    block["labels"][1]["name"] = "wide"
    del block["preprocessing"]["target_spacing_mm"]
    write_bundle_configs(folder, block)
    with pytest.raises(CatalogueError, match=r"'imaginfo.labels\[1\].name' is 'wide'.*'thick'"):
        bundles.entry_from_bundle(folder, "example-model")
    write_bundle_configs(folder, {"colour": "red"})
    with pytest.raises(CatalogueError, match="'imaginfo.colour' is not a key"):
        bundles.entry_from_bundle(folder, "example-model")


REFUSED_BUNDLES = {
    "a class outside MONAI's networks": (
        {"network_def": {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 3}},
        "'network_def._target_' is 'torch.nn.Linear'; ImagInfo imports only classes of monai.networks.nets",
    ),
    "an expression": (
        {"network_def": {"_target_": "UNet", **UNET_ARGS, "channels": "$[4, 8]"}},
        "'network_def.channels' is a Python expression",
    ),
    "an unknown transform": (
        {"preprocessing": {"_target_": "Compose", "transforms": [{"_target_": "RandFlipd", "keys": "image"}]}},
        r"'preprocessing.transforms\[0\]' is RandFlipd",
    ),
    "an unclipped window": (
        {"preprocessing": [{"_target_": "ScaleIntensityRanged", "a_min": 0, "a_max": 1, "b_min": 0, "b_max": 1}]},
        r"'preprocessing\[0\].clip' is None",
    ),
    "another inferer": ({"inferer": {"_target_": "SimpleInferer"}}, "only SlidingWindowInferer"),
    "a missing reference": ({"network_def": "@nowhere"}, "refers to '@nowhere'"),
}


@pytest.mark.parametrize("case", list(REFUSED_BUNDLES))
def test_what_a_bundle_cannot_map_is_refused_naming_the_key(tiny, tmp_path, case):
    changes, message = REFUSED_BUNDLES[case]
    folder = tmp_path / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(b"not read before the configs are mapped")
    write_bundle_configs(folder, **changes)
    with pytest.raises(bundles.BundleError, match=message):
        bundles.entry_from_bundle(folder, "refused")


def test_listing_models_needs_neither_torch_nor_monai_nor_jsonschema(tmp_path):
    """Slicer lists models before PyTorch is installed, and may lack jsonschema."""
    import subprocess

    path = tmp_path / "models.json"
    path.write_text(json.dumps(as_document(example_json())))
    script = (
        "import sys; sys.modules['jsonschema'] = None\n"
        "from ImagInfoExtension.segmentation import bundle, catalogue, weights\n"
        f"found = catalogue.load_catalogue([{str(path)!r}])\n"
        "assert catalogue.schema_errors({}) is None\n"
        "print(len(found), weights.verify_weights(found.get('example-model')).present,"
        " any(name in sys.modules for name in ('torch', 'monai')))\n"
    )
    environment = os.environ | {"IMAGINFO_MODEL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False", "False"]
