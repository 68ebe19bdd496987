"""Machine-readable run logs: one JSON object per line, one line per event."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from wsi_infer.errors import OutputWriteError
from wsi_infer.store import refuse_inside_store

__all__ = ["EventLog"]


class EventLog:
    """Append events to a JSON-lines file (or nowhere, when ``path`` is None).

    Every line has ``time`` (UTC, ISO 8601) and ``event``; the rest depends on
    the event: ``batch_started``, ``slide_started``, ``progress``,
    ``slide_finished``, ``slide_skipped``, ``slide_failed`` (with ``error``),
    ``batch_finished``.
    """

    def __init__(self, path: str | Path | None) -> None:
        self._fh: TextIO | None = None
        if path is not None:
            path = Path(path)
            refuse_inside_store(path, "event log")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = path.open("a", encoding="utf-8")
            except OSError as exc:
                raise OutputWriteError(
                    f"{path}: cannot write the event log ({exc.strerror or exc}); give a "
                    "writable file path to --log-json"
                ) from exc
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event}
        record.update(fields)
        line = json.dumps(record, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressEvents:
    """Wraps a progress bar (or nothing) to also log ``progress`` events every 10 %."""

    def __init__(
        self, bar: Any, log: EventLog, slide: str, stage: str, total: int, initial: int = 0
    ) -> None:
        self.bar, self.log, self.slide, self.stage, self.total = bar, log, slide, stage, total
        self.done = initial  # what a resumed run found done
        self._next = int(initial / total * 10) / 10 + 0.1 if total else 0.1

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        self.done += n
        if self.total and self.done / self.total >= self._next:
            self.log.emit(
                "progress", slide=self.slide, stage=self.stage, done=self.done, total=self.total
            )
            self._next = int(self.done / self.total * 10) / 10 + 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
