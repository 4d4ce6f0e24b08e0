"""The child-process runner: long jobs run as ``imaginfo`` under Slicer's own Python.

Slicer does not enable PythonQt's thread support, so a Python worker thread gets
little time while the GUI idles. ImagInfo modules therefore run every long job as a
child process, ``PythonSlicer -m ImagInfoExtension <command> ... --progress json``
(under pytest, the test environment's Python stands in for PythonSlicer). The child
writes one JSON progress object per line to stderr; stderr and stdout go to files in
the job's work folder, which :meth:`ChildJob.poll` reads from where it stopped, so
polling from a QTimer never blocks the GUI and a chatty child can never fill a pipe.

The child runs in its own process group (session on POSIX), so :meth:`ChildJob.cancel`
ends it together with its worker processes (Dask workers, and the real Python behind
the PythonSlicer launcher). Outputs are read by the job's ``read_result`` only after
a successful exit, and the caller builds nodes from them, so a cancelled or failed run
leaves the scene as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ImagInfoExtension
from ImagInfoExtension.bridge.compat import application, import_slicer
from ImagInfoExtension.io import remove_partial_files
from ImagInfoExtension.progress import PARENT_PIPE_VARIABLE, Cancelled, ProgressEvent, parse_progress_line

RUNNING = "running"
CANCELLING = "cancelling"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STDERR_FILE = "stderr.log"
STDOUT_FILE = "stdout.log"

#: Seconds a cancelled job gets to exit on SIGTERM (and remove its temporary files)
#: before its whole process group is killed.
CANCEL_GRACE_S = 5.0
#: Seconds to wait after SIGKILL before giving up on a process that does not go away.
KILL_WAIT_S = 10.0


class JobFailedError(RuntimeError):
    """The child exited with an error; the message is the child's own error message."""


def package_root() -> Path:
    """The folder that holds the ``ImagInfoExtension`` package (source, build or install tree)."""
    return Path(ImagInfoExtension.__file__).resolve().parent.parent


def python_command() -> list[str]:
    """The Python that runs jobs: ``PythonSlicer`` inside Slicer, this interpreter elsewhere.

    ``IMAGINFO_PYTHON`` overrides both.
    """
    override = os.environ.get("IMAGINFO_PYTHON")
    if override:
        return [override]
    app = application()
    if app is None:
        return [sys.executable]
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    home = getattr(app, "slicerHome", "")
    # This Slicer's own first: another Slicer on PATH has other packages installed.
    candidates = [str(Path(home) / "bin" / name)] if home else []
    candidates.append(shutil.which("PythonSlicer"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return [candidate]
    raise RuntimeError("PythonSlicer was not found beside Slicer; reinstall Slicer (it ships bin/PythonSlicer)")


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: Slicer's startup environment (without the launcher's
    paths) inside Slicer, this process's elsewhere; plus this package on PYTHONPATH,
    which PythonSlicer's launcher keeps behind its own paths."""
    if application() is not None:
        environment = dict(import_slicer().util.startupEnvironment())
    else:
        environment = dict(os.environ)
    paths = [str(package_root())] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    # The child ends itself when its stdin (a pipe this process holds) closes: Slicer quit or crashed.
    environment[PARENT_PIPE_VARIABLE] = "1"
    environment.update(extra or {})
    return environment


def imaginfo_arguments(command: str, arguments: Sequence[str]) -> list[str]:
    """The full command line of ``imaginfo <command> <arguments> --progress json``."""
    return [*python_command(), "-m", "ImagInfoExtension", command, *[str(a) for a in arguments], "--progress", "json"]


class ChildJob:
    """One ``imaginfo`` command running as a child process.

    Parameters
    ----------
    command : str
        The ``imaginfo`` subcommand (``vessels``, ``compare``, ...).
    arguments : sequence of str
        Its arguments; ``--progress json`` is added.
    work_dir : path, optional
        Where stdout and stderr are kept (a new temporary folder by default).
    remove_work_dir : bool, optional
        Whether :meth:`close` removes the work folder; by default only one the job made.
    read_result : callable, optional
        Called once, after a successful exit, to read the outputs (e.g. ``lambda:
        read_results(out)``); :meth:`result` returns its value.
    output_dir : path, optional
        A folder the job writes into; after a cancel, temporary files that a killed
        writer left there are removed.
    environment : dict, optional
        Extra environment variables.
    success_codes : sequence of int
        Exit codes that count as success (``imaginfo compare`` exits with 3 when some
        series failed but the comparison was written).
    context : dict, optional
        What the caller wants back when the job ends (e.g. the nodes the run was
        started for), as :attr:`context`.

    Examples
    --------
    >>> out = "vessels_out"
    >>> job = ChildJob("vessels", ["ct.nrrd", "--out", out], read_result=lambda: read_results(out))  # doctest: +SKIP
    >>> job.wait().result()  # doctest: +SKIP
    """

    def __init__(
        self,
        command: str,
        arguments: Sequence[str],
        work_dir: str | Path | None = None,
        read_result: Callable[[], Any] | None = None,
        output_dir: str | Path | None = None,
        environment: dict[str, str] | None = None,
        remove_work_dir: bool | None = None,
        success_codes: Sequence[int] = (0,),
        context: dict[str, Any] | None = None,
    ) -> None:
        self.command = command
        self.success_codes = tuple(success_codes)
        self.context = dict(context or {})
        self._owns_work_dir = work_dir is None if remove_work_dir is None else remove_work_dir
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"imaginfo-{command}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir = Path(output_dir) if output_dir else None
        self.arguments = imaginfo_arguments(command, arguments)
        self._read_result = read_result
        self._result: Any = None
        self._result_read = False
        self.progress = ProgressEvent(0, 1, f"starting imaginfo {command}")
        self.messages: deque[str] = deque(maxlen=400)
        self._offset = 0
        self._partial_line = b""
        self._cancel_deadline: float | None = None
        self._kill_deadline: float | None = None
        self.state = RUNNING
        stderr_path = self.work_dir / STDERR_FILE
        with open(stderr_path, "wb") as stderr, open(self.work_dir / STDOUT_FILE, "wb") as stdout:
            options: dict[str, Any] = {}
            if os.name == "nt":
                # Hidden console, as slicer.util.launchConsoleProcess does: the child and its
                # workers share it instead of each opening a window.
                startup = subprocess.STARTUPINFO()
                startup.dwFlags |= subprocess.STARTF_USESHOWWINDOW
                startup.wShowWindow = 0  # SW_HIDE
                options["startupinfo"] = startup
                options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                options["start_new_session"] = True
            self.process = subprocess.Popen(
                self.arguments,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                cwd=str(self.work_dir),
                env=child_environment(environment),
                **options,
            )

    # Reading ------------------------------------------------------------------------

    def _read_new_lines(self, final: bool = False) -> None:
        """Take in what the child wrote since the last read; ``final``: also its last, unterminated line."""
        path = self.work_dir / STDERR_FILE
        try:
            with open(path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        if not chunk and not (final and self._partial_line):
            return
        self._offset += len(chunk)
        lines = (self._partial_line + chunk).split(b"\n")
        self._partial_line = b"" if final else lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            event = parse_progress_line(line)
            if event is not None:
                self.progress = event
            elif line.strip():
                self.messages.append(line)

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, CANCELLED)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> ProgressEvent:
        """Read what the child reported since the last call and update :attr:`state`; never blocks."""
        self._read_new_lines()
        if self.state == RUNNING and self.process.poll() is not None:
            self._read_new_lines(final=True)
            self._close_stdin()
            if self._group_alive():
                # The child has exited; anything left in its group is an orphaned worker.
                self._signal_group(terminate=False)
            self.state = SUCCEEDED if self.process.returncode in self.success_codes else FAILED
        elif self.state == CANCELLING:
            self._advance_cancel()
        return self.progress

    def wait(self, timeout_s: float | None = None, idle: Callable[[], None] | None = None) -> ChildJob:
        """Block until the job ends, calling ``idle`` (e.g. ``slicer.app.processEvents``) between polls."""
        started = time.monotonic()
        while True:
            self.poll()
            if self.finished:
                return self
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"imaginfo {self.command} still runs after {timeout_s:g} s")
            if idle is not None:
                idle()
            time.sleep(0.05)

    @property
    def error_message(self) -> str:
        """What went wrong, in the child's own words."""
        lines = list(self.messages)
        for line in reversed(lines):
            marker = f"imaginfo {self.command}: "
            if line.startswith(marker):
                return line[len(marker) :].removeprefix("error: ")
        tail = [line for line in lines if not line.startswith(" ")][-3:]
        if tail:
            return " | ".join(tail)
        return f"imaginfo {self.command} exited with code {self.returncode}"

    @property
    def log(self) -> str:
        """The child's stdout and the non-progress lines of its stderr."""
        stdout = (self.work_dir / STDOUT_FILE).read_text(errors="replace") if self.work_dir.is_dir() else ""
        return stdout + "\n".join(self.messages)

    def result(self) -> Any:
        """The outputs, read once after a successful exit.

        Raises
        ------
        JobFailedError
            The child failed; the message is its own.
        Cancelled
            The job was cancelled (the one cancellation convention, :class:`ImagInfoExtension.progress.Cancelled`).
        RuntimeError
            The job has not finished yet.
        """
        self.poll()
        if self.state == SUCCEEDED:
            if not self._result_read:
                self._result = self._read_result() if self._read_result is not None else None
                self._result_read = True
            return self._result
        if self.state == FAILED:
            raise JobFailedError(self.error_message)
        if self.state in (CANCELLED, CANCELLING):
            raise Cancelled(f"imaginfo {self.command} was cancelled")
        raise RuntimeError(f"imaginfo {self.command} is still running; poll() or wait() first")

    # Ending -------------------------------------------------------------------------

    def cancel(self, wait: bool = False) -> None:
        """End the child and its worker processes.

        POSIX: SIGTERM to the process group (the command unwinds like Ctrl-C and removes
        its temporary files), SIGKILL after :data:`CANCEL_GRACE_S`. Windows: the whole
        tree at once (``taskkill /T /F``, while the launcher still links it). Returns at
        once; :meth:`poll` completes the cancel (``wait=True`` blocks until it has).
        Finished outputs of a resumable job (its per-case records) are kept.
        """
        if self.finished or self.state == CANCELLING:
            if wait:
                self.wait()
            return
        self.state = CANCELLING
        self._cancel_deadline = time.monotonic() + (0.0 if os.name == "nt" else CANCEL_GRACE_S)
        self._signal_group(terminate=True)
        self._advance_cancel()
        if wait:
            self.wait()

    def _group_alive(self) -> bool:
        if os.name == "nt":
            return self.process.poll() is None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            # macOS answers EPERM for a group of zombies only: alive while our child is.
            return self.process.poll() is None
        return True

    def _close_stdin(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def _signal_group(self, terminate: bool) -> None:
        if os.name == "nt":
            if self.process.poll() is not None:
                return
            # taskkill /T ends the whole tree (PythonSlicer's launcher, Python, workers).
            subprocess.run(
                ["taskkill", "/PID", str(self.process.pid), "/T", "/F"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                creationflags=subprocess.CREATE_NO_WINDOW,
                check=False,
            )
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM if terminate else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _advance_cancel(self) -> None:
        self.process.poll()  # reap the direct child, so that a dead group reads as dead
        now = time.monotonic()
        if self._group_alive():
            if self._kill_deadline is None and self._cancel_deadline is not None and now > self._cancel_deadline:
                self._signal_group(terminate=False)
                self._kill_deadline = now + KILL_WAIT_S
            if self._kill_deadline is None or now < self._kill_deadline:
                return
            # Killed, yet still there (stuck in the kernel): stop waiting rather than hang Slicer.
            self.messages.append(f"imaginfo {self.command}: cancelled, but process {self.process.pid} did not exit")
            self._owns_work_dir = False
        self._read_new_lines(final=True)
        self._close_stdin()
        if self.output_dir is not None:
            remove_partial_files(self.output_dir)
        self.state = CANCELLED

    def close(self) -> None:
        """Cancel if still running, then remove the work folder (when this job made it)."""
        if not self.finished:
            self.cancel(wait=True)
        self._close_stdin()
        if self._owns_work_dir:
            for attempt in range(5):
                # Windows keeps a killed process's files locked for a moment.
                shutil.rmtree(self.work_dir, ignore_errors=True)
                if not self.work_dir.exists():
                    break
                time.sleep(0.2 * (attempt + 1))

    def __enter__(self) -> ChildJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
