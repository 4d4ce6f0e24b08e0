"""How long jobs report progress: to a callback, a terminal bar, or JSON lines.

Every long computation takes ``progress(done, total, message)``. The command line
turns those calls into a tqdm bar, or, with ``--progress json``, into one JSON object
per line on stderr::

    {"done": 3, "total": 30, "message": "FBP_1mGy_rep2: ok"}

flushed per line; the last line of a successful run has ``done == total``. A GUI that
runs ``imaginfo`` as a child process reads those lines back with
:func:`parse_progress_line`. Writer and reader live here together so they cannot
drift apart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

#: ``progress(done, total, message)``; it may raise :class:`Cancelled` to stop the job that calls it.
ProgressCallback = Callable[[int, int, str], None]


class Cancelled(KeyboardInterrupt):
    """The one way a job is cancelled.

    A caller cancels by raising it from its progress callback; the command line turns
    Ctrl-C and SIGTERM (a GUI's Cancel) into the same unwinding, since this is a
    :class:`KeyboardInterrupt`. Like Ctrl-C it is no :class:`Exception`: a batch does not
    record it as one more failed case, and every ``finally`` on the way out removes
    partial files and stops workers. What finished stays finished (the batch cache),
    and the message says so.
    """


PROGRESS_MODES = ("bar", "json", "none")

#: Set to "1" in a child's environment by a GUI that runs ``imaginfo`` with a pipe on its
#: stdin: the command then ends itself when that pipe closes (the GUI has gone).
PARENT_PIPE_VARIABLE = "IMAGINFO_PARENT_PIPE"


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.done / self.total)) if self.total > 0 else 0.0

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total

    def to_json(self) -> str:
        return json.dumps({"done": self.done, "total": self.total, "message": self.message})


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The event of one ``--progress json`` line; None for any other line (a log message, a warning)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not {"done", "total"} <= record.keys():
        return None
    try:
        return ProgressEvent(int(record["done"]), int(record["total"]), str(record.get("message", "")))
    except (TypeError, ValueError):
        return None


class JsonProgress:
    """Writes each report as a JSON line to a stream (stderr by default), flushed per line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last: ProgressEvent | None = None

    def __call__(self, done: int, total: int, message: str) -> None:
        event = ProgressEvent(int(done), int(total), str(message))
        stream = self._stream or sys.stderr
        stream.write(event.to_json() + "\n")
        stream.flush()
        self._last = event

    def close(self, succeeded: bool = True) -> None:
        """After a successful run, make sure the last line says ``done == total``."""
        if not succeeded:
            return
        last = self._last
        if last is None:
            self(1, 1, "finished")
        elif not last.finished:
            total = max(last.total, 1)
            self(total, total, "finished")


class BarProgress:
    """A tqdm bar on stderr."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=1, desc=description, unit="step", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done: int, total: int, message: str) -> None:
        self._bar.total = total
        self._bar.n = done
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self, succeeded: bool = True) -> None:
        if succeeded:
            self._bar.n = self._bar.total
            self._bar.refresh()
        self._bar.close()


class SilentProgress:
    def __call__(self, done: int, total: int, message: str) -> None:
        pass

    def close(self, succeeded: bool = True) -> None:
        pass


def progress_reporter(mode: str, description: str) -> JsonProgress | BarProgress | SilentProgress:
    """The reporter of a ``--progress`` mode: ``bar``, ``json`` or ``none``."""
    if mode == "json":
        return JsonProgress()
    if mode == "none":
        return SilentProgress()
    if mode == "bar":
        return BarProgress(description)
    raise ValueError(f"unknown progress mode {mode!r}; choose one of {', '.join(PROGRESS_MODES)}")


def stage(progress: ProgressCallback | None, start: int, span: int, total: int) -> ProgressCallback | None:
    """A callback that maps one stage's ``(done, stage_total)`` onto ``[start, start + span]`` of ``total``.

    A job of several stages (generate a study, then compare it) then reports one
    count that only rises.
    """
    if progress is None:
        return None

    def report(done: int, stage_total: int, message: str) -> None:
        share = min(1.0, max(0.0, done / stage_total)) if stage_total > 0 else 0.0
        progress(start + round(span * share), total, message)

    return report
