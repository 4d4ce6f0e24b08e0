"""The batch engine: independent per-case jobs, in parallel, resumable.

Each case runs a picklable function ``job(payload, parameters) -> dict`` on a Dask
cluster: a local one with one single-threaded worker process per core by default, or
an existing one given by its scheduler address (that is how a study scales past one
machine). Each worker's SimpleITK, BLAS (numpy, scipy) and torch threads are capped so
that the workers share the cores instead of oversubscribing them. Each case's outcome
is written atomically to ``cache_dir`` as soon as it finishes, under a key made of the
case's input identity and a hash of the parameters; a later run with the same inputs
and parameters reads it back instead of computing it again, so an interrupted run
(crash, Ctrl-C, Cancel) loses nothing that had finished. A failing case is recorded
with its error and the others go on; failed cases are retried by the next run.

Cancelling follows :class:`ImagInfoExtension.progress.Cancelled`: the progress
callback raises it (or Ctrl-C / SIGTERM raise :class:`KeyboardInterrupt`); the batch
stops its workers and raises :class:`~ImagInfoExtension.progress.Cancelled` saying how
many cases finished and where they are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ImagInfoExtension.io import json_default, write_atomically
from ImagInfoExtension.progress import Cancelled, ProgressCallback

Job = Callable[[dict, dict], dict]

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"

#: The environment variables that size the BLAS and OpenMP thread pools (numpy, scipy,
#: torch). They only take effect when set before the libraries load, so local workers
#: get them before they are spawned.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class BatchCase:
    """One unit of work.

    Parameters
    ----------
    name : str
        Readable and unique within the batch (used in file names and messages).
    identity : dict
        What makes the input this input (see :func:`file_identity`); JSON-serialisable.
    payload : dict
        The job's own arguments; JSON-serialisable.
    """

    name: str
    identity: dict
    payload: dict = field(default_factory=dict)


@dataclass
class CaseOutcome:
    name: str
    status: str
    result: dict
    error: str = ""
    runtime_s: float = 0.0
    from_cache: bool = False


@dataclass
class BatchSummary:
    outcomes: list[CaseOutcome]
    workers: int
    wall_s: float

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == STATUS_FAILED]

    @property
    def succeeded(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == STATUS_OK]

    @property
    def cached(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.from_cache]


def file_identity(path: str | Path) -> dict:
    """Identity of a file or folder: its resolved path, and each file's size and modification time."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for f in files:
            stat = f.stat()
            digest.update(f"{f.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return {"path": str(path), "files": len(files), "digest": digest.hexdigest()[:16]}
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def parameter_hash(parameters: dict) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:12]


def case_key(case: BatchCase, parameters: dict) -> str:
    """``<name>-<hash of identity, payload and parameters>``."""
    digest = hashlib.sha256(
        json.dumps([case.identity, case.payload, parameters], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in case.name)
    return f"{safe}-{digest}"


def _read_cached(path: Path) -> CaseOutcome | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != STATUS_OK:
        return None
    return CaseOutcome(record["name"], STATUS_OK, record["result"], "", record.get("runtime_s", 0.0), True)


@contextmanager
def capped_threads(threads: int) -> Iterator[dict[str, int]]:
    """Cap SimpleITK's, the BLAS libraries' and torch's threads at ``threads`` while the block runs.

    Yields the caps in force, by library. BLAS pools are capped through threadpoolctl
    (the pools numpy and scipy loaded), torch only when the job has already imported it
    (importing torch only to cap it would cost seconds per worker); a torch imported
    later reads ``OMP_NUM_THREADS``, which local workers get at spawn.
    """
    import SimpleITK as sitk

    caps: dict[str, int] = {}
    previous_sitk = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    caps["SimpleITK"] = threads
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
        caps["blas"] = threads
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    previous_torch = None
    if torch is not None:
        previous_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
        caps["torch"] = threads
    try:
        yield caps
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_sitk)
        if limiter is not None:
            limiter.restore_original_limits()
        if torch is not None and previous_torch is not None:
            torch.set_num_threads(previous_torch)


def run_case(job: Job, case: BatchCase, parameters: dict, record_path: str, threads: int = 0) -> dict:
    """Run one case and write its record atomically; never raises for the job's own errors.

    Runs on a worker. ``threads`` > 0 caps SimpleITK's, BLAS's and torch's threads
    (:func:`capped_threads`) so that workers do not oversubscribe the cores.
    """
    started = time.perf_counter()
    try:
        if threads > 0:
            with capped_threads(threads):
                result = job(case.payload, parameters)
        else:
            result = job(case.payload, parameters)
        record = {"name": case.name, "status": STATUS_OK, "result": result, "error": ""}
    except Exception as error:  # noqa: BLE001 - one failing case must not stop the batch
        record = {
            "name": case.name,
            "status": STATUS_FAILED,
            "result": {},
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=6),
        }
    record["runtime_s"] = round(time.perf_counter() - started, 3)
    record["identity"] = case.identity
    text = json.dumps(record, default=json_default)
    write_atomically(Path(record_path), lambda p: p.write_text(text))
    return record


#: Cases allocate and free image-sized arrays. Dask's default trim threshold (64 KiB)
#: hands each back to the kernel, and faulting the pages in again costs about 10% of a
#: case; keeping up to 1 GiB of freed heap per worker avoids that.
WORKER_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_batch(
    job: Job,
    cases: Sequence[BatchCase],
    parameters: dict,
    cache_dir: str | Path,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    threads_per_case: int | None = None,
) -> BatchSummary:
    """Run ``job`` on every case; return every case's outcome in the order given.

    Parameters
    ----------
    job : callable
        ``job(payload, parameters) -> dict``, importable by name on the workers.
    cases : sequence of BatchCase
    parameters : dict
        Shared by all cases; JSON-serialisable; part of each case's cache key.
    cache_dir : path
        Where each case's record goes (``<case key>.json``).
    workers : int, optional
        Local worker processes (default: one per core). ``0`` runs the cases one after
        the other in this process, without Dask.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); ``workers`` is then
        ignored. Every worker must see ``cache_dir`` and the inputs at the same paths.
    progress : callable, optional
        ``progress(done, total, message)`` after each case; it may raise
        :class:`~ImagInfoExtension.progress.Cancelled`.
    threads_per_case : int, optional
        SimpleITK, BLAS and torch threads of each local worker; by default the cores
        shared out among the workers.

    Raises
    ------
    Cancelled
        When the progress callback raised it, or on Ctrl-C / SIGTERM. Finished cases
        stay recorded in ``cache_dir``; the message says how many.
    """
    started = time.perf_counter()
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("batch case names must be unique")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    records = {c.name: str(cache_dir / f"{case_key(c, parameters)}.json") for c in cases}
    outcomes: dict[str, CaseOutcome] = {}
    for case in cases:
        cached = _read_cached(Path(records[case.name]))
        if cached is not None:
            outcomes[case.name] = cached
    pending = [c for c in cases if c.name not in outcomes]
    done = len(outcomes)
    total = len(cases)
    if progress is not None and done:
        progress(done, total, f"{done} case(s) already finished")

    def finish(record: dict) -> None:
        nonlocal done
        outcome = CaseOutcome(
            record["name"], record["status"], record["result"], record.get("error", ""), record["runtime_s"]
        )
        outcomes[outcome.name] = outcome
        done += 1
        if progress is not None:
            progress(done, total, f"{outcome.name}: {outcome.status}")

    worker_count = 0
    try:
        if pending and workers == 0 and scheduler is None:
            for case in pending:
                finish(run_case(job, case, parameters, records[case.name]))
        elif pending:
            worker_count = _run_on_dask(job, pending, parameters, records, workers, scheduler, finish, threads_per_case)
    except KeyboardInterrupt as interrupt:
        finished = sum(o.status == STATUS_OK for o in outcomes.values())
        raise Cancelled(
            f"cancelled: {finished} of {total} case(s) finished and are kept in {cache_dir}; run again to go on"
        ) from interrupt
    return BatchSummary([outcomes[c.name] for c in cases], worker_count, round(time.perf_counter() - started, 3))


def _run_on_dask(job, pending, parameters, records, workers, scheduler, finish, threads_per_case) -> int:
    import logging

    import dask
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        workers = workers or default_workers()
        threads = threads_per_case or max(1, default_workers() // workers)
        spawn_environment = {**WORKER_ENVIRONMENT, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environment}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    else:
        client = Client(scheduler)
        workers = len(client.scheduler_info()["workers"])
        threads = 0
    try:
        names = {}
        for case in pending:
            future = client.submit(
                run_case,
                job,
                case,
                parameters,
                records[case.name],
                threads,
                key=Path(records[case.name]).stem,
                pure=False,
            )
            names[future] = case.name
        futures = list(names)
        try:
            for future in as_completed(futures):
                try:
                    record = future.result()
                except Exception as error:  # noqa: BLE001 - a lost worker fails its case, not the batch
                    record = None
                    finish(
                        {
                            "name": names[future],
                            "status": STATUS_FAILED,
                            "result": {},
                            "error": f"{type(error).__name__}: {error}",
                            "runtime_s": 0.0,
                        }
                    )
                if record is not None:
                    finish(record)
        finally:
            client.cancel([f for f in futures if not f.done()])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return workers
