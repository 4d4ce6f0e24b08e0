"""Model weights: one per-user cache, downloads checked against SHA-256, and safe loading.

Where the weights of a catalogue entry live:

* a shipped bundle, ``<resources>/<weights.bundle>/<weights.file>`` (see
  :func:`~ImagInfoExtension.segmentation.catalogue.resources_directories`);
* otherwise the cache, ``<cache>/<id>/<version>/<file name>``; the cache folder is
  ``$IMAGINFO_MODEL_CACHE`` when set, else the platform's per-user cache
  (``$XDG_CACHE_HOME/imaginfo/models`` or ``~/.cache/imaginfo/models`` on Linux,
  ``~/Library/Caches/imaginfo/models`` on macOS, ``%LOCALAPPDATA%\\imaginfo\\models``
  on Windows).

Safety: a file's size and SHA-256 are checked against the entry before it is ever
parsed, on the very bytes that are then parsed (read once, so the file cannot change
between check and load). State dicts load only through
``torch.load(weights_only=True)``, which refuses any pickle that names a Python
object to build; safetensors hold tensors only; TorchScript is loaded only from a
verified file. Network classes come only from ``monai.networks.nets``.

Downloads (``http``, ``https`` and ``file`` URLs, urllib only) go to a temporary
file in the cache folder and are renamed into place only once complete with the
right size and hash, so a failed, truncated or wrong download leaves nothing
behind. A URL may end in ``#sha256=<hex>`` (as pip's do) to give the SHA-256 of a
``.zip`` or ``.tar.gz`` bundle archive, whose weights file is then taken out of
the archive, checked and renamed into the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.segmentation.catalogue import (  # noqa: F401 - cache_directory and CACHE_VARIABLE are part of this API
    CACHE_VARIABLE,
    ModelEntry,
    cache_directory,
    resources_directories,
)

if TYPE_CHECKING:
    import torch

#: Prefix of every temporary file and folder this module makes in the cache.
PARTIAL_PREFIX = ".partial-"
#: Seconds a download may wait for the server before it is given up.
DOWNLOAD_TIMEOUT_S = 60.0
#: Archive members may unpack to at most this many bytes (a guard against archive bombs).
MAX_UNPACKED_BYTES = 16 * 1024**3
_CHUNK_BYTES = 1 << 20
_ARCHIVE_SUFFIXES = {".zip": "zip", ".tar.gz": "tar", ".tgz": "tar"}
#: Keys under which training checkpoints keep the network's state dict.
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "network", "net")


class WeightsError(ValueError):
    """Weights that are missing, damaged, unsafe or do not fit their network; the message says what to do."""


@dataclass(frozen=True)
class WeightsStatus:
    """What a check of a model's weights file found.

    Attributes
    ----------
    key : str
        The model's ``id@version``.
    path : Path or None
        The file checked (None when none is present).
    present, size_ok, sha256_ok : bool
        Whether the file exists, has the expected size, and hashes to the expected SHA-256.
    expected_size, actual_size : int, int or None
        Bytes.
    expected_sha256, actual_sha256 : str, str or None
        Hexadecimal digests (the actual one only once computed: never when the size is wrong).
    """

    key: str
    path: Path | None
    present: bool
    size_ok: bool
    sha256_ok: bool
    expected_size: int
    actual_size: int | None
    expected_sha256: str
    actual_sha256: str | None

    @property
    def ok(self) -> bool:
        return self.present and self.size_ok and self.sha256_ok

    def __str__(self) -> str:
        if self.ok:
            return f"weights verified: {self.path} ({self.actual_size} bytes, sha256 {self.actual_sha256})"
        if not self.present:
            return f"weights not present; {_fix(self.key)}"
        if not self.size_ok:
            return (
                f"weights at {self.path} have {self.actual_size} bytes, expected {self.expected_size} "
                f"(damaged or another file); {_fix(self.key)}"
            )
        return (
            f"weights at {self.path} do not match: sha256 {self.actual_sha256}, expected {self.expected_sha256}; "
            f"{_fix(self.key)}"
        )


def _fix(key: str) -> str:
    return (
        f"download them with `imaginfo models fetch {key}`, or side-load a good copy offline with "
        f"`imaginfo models fetch {key} --file FILE`"
    )


def cache_path(entry: ModelEntry) -> Path:
    """Where the cache keeps an entry's weights: ``<cache>/<id>/<version>/<file name>``."""
    return cache_directory() / entry.id / entry.version / PurePosixPath(entry.weights.file).name


def shipped_path(entry: ModelEntry) -> Path | None:
    """The weights file of the entry's shipped bundle, when it names one and the file exists."""
    if entry.weights.bundle is None:
        return None
    for directory in resources_directories():
        candidate = directory / entry.weights.bundle / entry.weights.file
        if candidate.is_file():
            return candidate
    return None


def weights_location(entry: ModelEntry) -> Path | None:
    """The shipped bundle's file when present, else the cache copy when present, else None.

    A shipped file of the wrong size gives way to a cache copy (one fetched to repair it).
    """
    shipped = shipped_path(entry)
    cached = cache_path(entry)
    if shipped is not None and (shipped.stat().st_size == entry.weights.size_bytes or not cached.is_file()):
        return shipped
    return cached if cached.is_file() else None


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, hexadecimal."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _remembered_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 remembered per (path, size, modification time): listing models does not rehash unchanged files."""
    key = (str(path.resolve()), size, mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def check_file(entry: ModelEntry, path: str | Path | None) -> WeightsStatus:
    """Check any file against an entry's size and SHA-256 (the hash only when the size is right)."""
    expected = entry.weights
    path = None if path is None else Path(path)
    if path is None or not path.is_file():
        return WeightsStatus(entry.key, path, False, False, False, expected.size_bytes, None, expected.sha256, None)
    info = path.stat()
    size_ok = info.st_size == expected.size_bytes
    digest = _remembered_sha256(path, info.st_size, info.st_mtime_ns) if size_ok else None
    return WeightsStatus(
        entry.key,
        path,
        True,
        size_ok,
        digest == expected.sha256,
        expected.size_bytes,
        info.st_size,
        expected.sha256,
        digest,
    )


def verify_weights(entry: ModelEntry) -> WeightsStatus:
    """Check the weights of an entry where :func:`weights_location` finds them."""
    return check_file(entry, weights_location(entry) or cache_path(entry))


def read_verified(entry: ModelEntry, path: str | Path | None = None) -> bytes:
    """The bytes of an entry's weights file, after checking their size and SHA-256 (always recomputed).

    Raises
    ------
    WeightsError
        When the file is absent, or its size or hash differ (expected and found, and the fix).
    """
    path = Path(path) if path is not None else weights_location(entry)
    if path is None or not path.is_file():
        where = f" at {path}" if path is not None else f" (looked for {cache_path(entry)})"
        raise WeightsError(f"the weights of {entry.key} are not present{where}; {_fix(entry.key)}")
    data = path.read_bytes()
    _check_bytes(entry, data, str(path))
    return data


def _check_bytes(entry: ModelEntry, data: bytes, source: str) -> None:
    if len(data) != entry.weights.size_bytes:
        raise WeightsError(
            f"the weights of {entry.key} at {source} have {len(data)} bytes, expected {entry.weights.size_bytes} "
            f"(truncated or another file); {_fix(entry.key)}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.weights.sha256:
        raise WeightsError(
            f"the weights of {entry.key} at {source} do not match their catalogue entry: sha256 {digest}, "
            f"expected {entry.weights.sha256}; they were not loaded; {_fix(entry.key)}"
        )


# --- getting weights into the cache -------------------------------------------------------------


def _staging_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=folder)
    os.close(handle)
    return Path(name)


def _install(entry: ModelEntry, staged: Path) -> Path:
    """Move a checked file into the cache (``os.replace``: atomic on one file system)."""
    target = cache_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)
    return target


def side_load_weights(entry: ModelEntry, file: str | Path) -> Path:
    """Copy a local weights file into the cache after checking its size and SHA-256 (offline use).

    Raises
    ------
    WeightsError
        When the file is absent or is not the entry's weights; the cache is left as it was.
    """
    file = Path(file)
    if not file.is_file():
        problem = "is not a file" if file.exists() else "does not exist"
        raise WeightsError(f"{file} {problem}; give the path of {entry.key}'s weights file")
    target = cache_path(entry)
    if target.is_file() and target.resolve() == file.resolve():
        read_verified(entry, target)
        return target
    staged = _staging_file(target.parent)
    try:
        shutil.copyfile(file, staged)
        data = staged.read_bytes()  # check the copy: what was checked is what gets installed
        _check_bytes(entry, data, str(file))
        return _install(entry, staged)
    finally:
        staged.unlink(missing_ok=True)
        _remove_empty(target.parent, cache_directory())


def _split_url(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its fragment, the archive kind its path ends in, and a ``#sha256=`` digest."""
    bare, fragment = urllib.parse.urldefrag(url)
    digest = None
    if fragment:
        match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
        if match is None:
            raise WeightsError(f"{url}: the only fragment a weights URL may carry is '#sha256=<64 hex digits>'")
        digest = match.group(1).lower()
    path = urllib.parse.urlsplit(bare).path.lower()
    kind = next((k for suffix, k in _ARCHIVE_SUFFIXES.items() if path.endswith(suffix)), None)
    return bare, kind, digest


def _download(
    url: str, staged: Path, expected_size: int | None, progress: ProgressCallback, label: str, timeout_s: float
) -> tuple[int, str]:
    """Stream ``url`` into ``staged``; returns (bytes, sha256). Raises WeightsError on any failure.

    A download stops as soon as it exceeds ``expected_size`` (or :data:`MAX_UNPACKED_BYTES`
    when the size is not known), so a wrong or endless answer cannot fill the disk.
    """
    limit = expected_size if expected_size is not None else MAX_UNPACKED_BYTES
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise WeightsError(f"{url}: only http, https and file URLs are downloaded, not {scheme or 'a bare path'}")
    request = urllib.request.Request(url, headers={"User-Agent": "ImagInfo"})
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(staged, "wb") as stream:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.strip().isdigit() else None
            total = announced if announced is not None else (expected_size or 0)
            progress(0, total, f"downloading {label}")
            while block := response.read(_CHUNK_BYTES):
                stream.write(block)
                digest.update(block)
                done += len(block)
                if done > limit:
                    raise WeightsError(f"{url}: sent more than the {limit} bytes expected; stopped")
                progress(done, max(total, done), f"downloading {label}")
    except WeightsError:
        raise
    except urllib.error.HTTPError as error:
        raise WeightsError(f"{url}: the server answered {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise WeightsError(f"{url}: cannot be reached ({error.reason})") from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # timeouts, dropped connections, bad replies
        raise WeightsError(f"{url}: the download failed after {done} bytes ({type(error).__name__}: {error})") from None
    if announced is not None and done != announced:
        raise WeightsError(f"{url}: the download was truncated: got {done} of {announced} bytes")
    return done, digest.hexdigest()


def fetch_weights(
    entry: ModelEntry,
    progress: ProgressCallback | None = None,
    url: str | None = None,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download an entry's weights into the cache, checked against size and SHA-256.

    Nothing is downloaded when verified weights are already present. The URLs are
    tried in order (``url`` instead of the entry's when given); each goes to a
    temporary file in the cache that becomes the cache copy only once complete and
    verified.

    Parameters
    ----------
    entry : ModelEntry
    progress : callable, optional
        ``progress(done_bytes, total_bytes, message)``; the last call has ``done == total``.
    url : str, optional
        Download from here instead (``http``, ``https`` or ``file``; a ``.zip`` or
        ``.tar.gz`` bundle archive, optionally with ``#sha256=<hex>`` of the archive).
    timeout_s : float
        Seconds to wait for the server before giving up.

    Returns
    -------
    Path
        The verified weights file.

    Raises
    ------
    WeightsError
        When no URL gave the right file (each failure named: expected and got), with
        the fix. No partial file is left in the cache.
    """
    progress = progress or _no_progress
    status = verify_weights(entry)
    if status.ok:
        progress(status.expected_size, status.expected_size, f"{entry.key}: weights already present and verified")
        return status.path
    urls = [url] if url else list(entry.weights.urls)
    if not urls:
        raise WeightsError(
            f"{entry.key} names no download URL; side-load its weights offline with "
            f"`imaginfo models fetch {entry.key} --file FILE` or `imaginfo models fetch {entry.key} --url URL`"
        )
    failures = []
    for address in urls:
        try:
            path = _fetch_one(entry, address, progress, timeout_s)
        except WeightsError as error:
            failures.append(str(error))
            continue
        size = entry.weights.size_bytes
        progress(size, size, f"{entry.key}: weights verified")
        return path
    raise WeightsError(
        f"could not fetch the weights of {entry.key}:\n  " + "\n  ".join(failures) + "\nNothing was kept. Side-load "
        f"a good copy offline with `imaginfo models fetch {entry.key} --file FILE` (or import a bundle with "
        "`imaginfo models import PATH --id ID`)."
    )


def _no_progress(done: int, total: int, message: str) -> None:
    return None


def _fetch_one(entry: ModelEntry, url: str, progress: ProgressCallback, timeout_s: float) -> Path:
    bare, archive_kind, archive_sha256 = _split_url(url)
    folder = cache_path(entry).parent
    staged = _staging_file(folder)
    try:
        expected = None if archive_kind else entry.weights.size_bytes
        size, digest = _download(bare, staged, expected, progress, f"{entry.key} from {bare}", timeout_s)
        if archive_kind is None:
            if size != entry.weights.size_bytes:
                raise WeightsError(f"{bare}: got {size} bytes, expected {entry.weights.size_bytes}")
            if digest != entry.weights.sha256:
                raise WeightsError(f"{bare}: got sha256 {digest}, expected {entry.weights.sha256}")
            return _install(entry, staged)
        if archive_sha256 is not None and digest != archive_sha256:
            raise WeightsError(f"{bare}: the archive's sha256 is {digest}, the URL states {archive_sha256}")
        return _install_from_archive(entry, staged, archive_kind, bare)
    finally:
        staged.unlink(missing_ok=True)
        _remove_empty(folder, cache_directory())


def _remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents below ``top`` while they are empty (what a failed fetch made)."""
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): keep it
            return
        folder = folder.parent


def _install_from_archive(entry: ModelEntry, archive: Path, kind: str, source: str) -> Path:
    unpacked = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=archive.parent))
    try:
        root = bundle_root(unpack_archive(archive, unpacked, kind=kind))
        inner = root / entry.weights.file
        if not inner.is_file():
            inner = root / PurePosixPath(entry.weights.file).name
        if not inner.is_file():
            raise WeightsError(f"{source}: the archive holds no {entry.weights.file}")
        _check_bytes(entry, inner.read_bytes(), f"{source} ({entry.weights.file})")
        return _install(entry, inner)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _check_member(name: str, archive: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise WeightsError(f"{archive}: refused: the member {name!r} would be written outside the folder it unpacks to")


def unpack_archive(archive: str | Path, destination: str | Path, kind: str | None = None) -> Path:
    """Unpack a ``.zip`` or ``.tar.gz`` into ``destination``, refusing members that leave it.

    Absolute paths, ``..``, links and device files are refused before anything is
    written; so is an archive that would unpack to more than :data:`MAX_UNPACKED_BYTES`.

    Raises
    ------
    WeightsError
        Naming the archive and the member.
    """
    archive, destination = Path(archive), Path(destination)
    name = archive.name.lower()
    kind = kind or next((k for suffix, k in _ARCHIVE_SUFFIXES.items() if name.endswith(suffix)), None)
    destination.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as bundle:
                for info in bundle.infolist():
                    _check_member(info.filename, archive.name)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise WeightsError(f"{archive.name}: refused: the member {info.filename!r} is a link")
                    total += info.file_size
                _check_total(total, archive.name)
                bundle.extractall(destination)
        elif kind == "tar":
            with tarfile.open(archive, "r:gz") as bundle:
                members = bundle.getmembers()
                for member in members:
                    _check_member(member.name, archive.name)
                    if not (member.isfile() or member.isdir()):
                        raise WeightsError(f"{archive.name}: refused: the member {member.name!r} is not a plain file")
                    total += member.size
                _check_total(total, archive.name)
                if hasattr(tarfile, "data_filter"):
                    bundle.extractall(destination, members=members, filter="data")
                else:  # pragma: no cover  (Python without PEP 706; the members were checked above)
                    bundle.extractall(destination, members=members)
        else:
            raise WeightsError(f"{archive.name}: not a .zip or .tar.gz archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise WeightsError(f"{archive.name}: cannot be unpacked (damaged or not an archive: {error})") from None
    return destination


def _check_total(total: int, name: str) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise WeightsError(f"{name}: refused: it would unpack to {total} bytes (more than {MAX_UNPACKED_BYTES})")


def bundle_root(folder: str | Path) -> Path:
    """The folder holding ``configs/`` or ``models/``: ``folder`` itself or its only subfolder."""
    folder = Path(folder)
    if (folder / "configs").is_dir() or (folder / "models").is_dir():
        return folder
    children = [child for child in folder.iterdir() if not child.name.startswith(".") and child.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder


# --- loading ------------------------------------------------------------------------------------


def network_class(name: str) -> type:
    """The class ``name`` of ``monai.networks.nets``, and nothing else.

    Raises
    ------
    WeightsError
        When ``monai.networks.nets`` has no such torch module class.
    """
    torch = _import_torch()
    try:
        from monai.networks import nets
    except ImportError as error:
        raise WeightsError(
            f"MONAI is not installed ({error}); install it (in Slicer: the PyTorch extension, then "
            "slicer.util.pip_install('monai'))"
        ) from None

    candidate = getattr(nets, name, None) if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name or "") else None
    if not (isinstance(candidate, type) and issubclass(candidate, torch.nn.Module)):
        raise WeightsError(
            f"'{name}' is not a network class of monai.networks.nets (ImagInfo builds networks from that module "
            "only); name one such as UNet, SegResNet, SwinUNETR, or use a TorchScript file"
        )
    return candidate


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise WeightsError(
            f"PyTorch is not installed ({error}); install it (in Slicer: the PyTorch extension's installer, "
            "which picks the right CUDA build)"
        ) from None
    return torch


def _refusal(source: str, error: Exception) -> WeightsError:
    message = str(error)
    wanted = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"[Uu]nsupported global:?\s*([\w.]+)", message)
    if wanted is not None or "Weights only load failed" in message:
        what = f"asks to build the Python object {wanted.group(1)}, which" if wanted else "is a pickle that"
        return WeightsError(
            f"{source} was refused: it is not a plain weights file: it {what} could run arbitrary code when "
            "loaded. ImagInfo never loads unverified pickles; it reads weights only with "
            "torch.load(weights_only=True), safetensors or verified TorchScript. Save the network's state dict "
            "(torch.save(model.state_dict(), 'model.pt')) or export safetensors or TorchScript instead."
        )
    return _corrupt(source, error)


def _corrupt(source: str, error: Exception) -> WeightsError:
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return WeightsError(
        f"{source} cannot be read as weights: it is damaged or not a weights file ({type(error).__name__}: "
        f"{detail}); download it again or side-load a good copy"
    )


def _tensor_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    import torch

    def tensors_only(value: object) -> bool:
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
        )

    if tensors_only(loaded) and loaded:
        state = dict(loaded)
    elif isinstance(loaded, Mapping) and any(tensors_only(loaded.get(key)) for key in _STATE_KEYS):
        state = dict(next(loaded[key] for key in _STATE_KEYS if tensors_only(loaded.get(key))))
    else:
        raise WeightsError(
            f"{source} holds no state dict (a mapping of parameter names to tensors, directly or under one of "
            f"{', '.join(_STATE_KEYS)}); save the network's state_dict()"
        )
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def state_dict_from_bytes(data: bytes, format: str, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``state_dict`` or ``safetensors`` weights file, read without running any code."""
    torch = _import_torch()

    if format == "safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except Exception as error:  # noqa: BLE001  (safetensors raises its own kinds for damaged headers)
            raise _corrupt(source, error) from None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (UnpicklingError for refused objects; RuntimeError, EOFError for damage)
        import pickle

        if isinstance(error, pickle.UnpicklingError):
            raise _refusal(source, error) from None
        raise _corrupt(source, error) from None
    return _tensor_dict(loaded, source)


def network_from_bytes(entry: ModelEntry, data: bytes, source: str = "the weights file") -> torch.nn.Module:
    """Build the entry's network from weights already checked, in eval mode on the CPU.

    Raises
    ------
    WeightsError
        When the file is refused (not plain weights), damaged, or does not fit the
        network (missing or unexpected parameters, shape mismatches).
    """
    torch = _import_torch()

    if entry.weights.format == "torchscript":
        try:
            network = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as error:  # noqa: BLE001  (TorchScript reports damage as RuntimeError and others)
            raise _corrupt(source, error) from None
        return network.eval()
    state = state_dict_from_bytes(data, entry.weights.format, source)
    cls = network_class(entry.network.class_name)
    try:
        network = cls(**dict(entry.network.args))
    except Exception as error:  # noqa: BLE001  (any failure of the constructor is the entry's arguments)
        raise WeightsError(
            f"{entry.key}: monai.networks.nets.{cls.__name__} cannot be built from network.args "
            f"{dict(entry.network.args)}: {error}"
        ) from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"{source} does not fit the network {cls.__name__}{_arguments(entry.network.args)} of {entry.key}: "
            f"{' '.join(str(error).split())}"
        ) from None
    return network.eval()


def _arguments(args: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def load_network(entry: ModelEntry, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The entry's network with its weights, in eval mode on ``device``.

    The file's size and SHA-256 are checked on the bytes that are then loaded, every time.

    Raises
    ------
    WeightsError
        Absent weights, a hash or size mismatch (expected, found, file and fix), a
        refused pickle, a damaged file, or weights that do not fit the network.
    """
    path = weights_location(entry)
    data = read_verified(entry, path)
    return network_from_bytes(entry, data, str(path)).to(device)
