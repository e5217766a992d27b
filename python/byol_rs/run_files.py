"""The files of a training run that must survive a kill at any moment: ``metrics.csv``, one row
per step, appended; and ``trainer_state.json``, the trainer's own counters, of constant size.

A checkpoint write is one atomic rename (src/checkpoint.rs), and so is the state's. The state is
written first and keeps the entry before it, so whichever of the two renames a kill falls between,
the state holds an entry for the checkpoint on disk: the one whose step is the checkpoint's. That
entry records how many bytes of the CSV belong to the checkpoint, and a resumed run cuts the CSV
back to them, so no row is lost or written twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

FIELDS = ("step", "epoch", "seconds", "loss", "lr", "tau", "z_std", "knn")
_HEADER = ",".join(FIELDS) + "\r\n"


class MetricsLog:
    """``metrics.csv``: appended rows, fsynced at each checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def reset(self) -> None:
        self.path.write_text(_HEADER, newline="")

    def append(self, rows: Iterable[Dict[str, Any]], sync: bool = False) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writerows(rows)
        with open(self.path, "a", newline="") as f:
            f.write(buf.getvalue())
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def size(self) -> int:
        return self.path.stat().st_size

    def truncate(self, nbytes: int) -> None:
        """Drops the rows written after the checkpoint a run resumes from."""
        if not self.path.exists() or self.size() < nbytes:
            raise ValueError(f"{self.path} is shorter than its checkpoint recorded ({nbytes} bytes)")
        with open(self.path, "r+b") as f:
            f.truncate(nbytes)

    def read(self) -> List[Dict[str, Any]]:
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["step"] = int(r["step"])
            for k in FIELDS[1:]:
                if r[k] not in ("", None):
                    r[k] = float(r[k])
        return rows


def write_state(path: Path, entry: Dict[str, Any], previous: Optional[Dict[str, Any]]) -> None:
    """Atomically replaces ``path`` with ``entry`` and the entry before it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"current": entry, "previous": previous}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(path: Path, step: int) -> Dict[str, Any]:
    """The entry written for the checkpoint at ``step``. A state file from before entries (it
    held every row) comes back as one entry, with its rows under ``rows``."""
    state = json.loads(path.read_text())
    if "current" not in state:  # the layout of byol-rs 0.1 before this module
        return {**state, "step": step, "csv_bytes": None}
    for entry in (state["current"], state["previous"]):
        if entry is not None and entry["step"] == step:
            return entry
    raise ValueError(f"{path} holds no entry for the checkpoint's step {step}")
