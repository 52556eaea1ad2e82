"""A small reader of offline W&B run files (``run-<id>.wandb``), for tests.

wandb 0.31 writes no ``wandb-summary.json`` for an offline run and ships no Python
reader for its transaction log, so the tests read the file themselves. The format, as
checked against files wandb 0.31 (wandb-core) writes:

* a 7-byte file header: ``b":W&B"``, the magic ``0xBEE1`` (little-endian), version ``0``;
* a LevelDB-style log in 32 KiB blocks (the file header counts toward the first block);
  each record chunk sits behind a 7-byte header: CRC 4 bytes, little-endian uint16
  length, 1 byte type (FULL=1, FIRST=2, MIDDLE=3, LAST=4). A block tail shorter than a
  header is zero padding. The CRC is the plain IEEE CRC-32 (``zlib.crc32``) of the type
  byte followed by the payload -- not LevelDB's masked CRC32C;
* each reassembled payload is a ``wandb.proto.wandb_internal_pb2.Record``.

Example::

    run = read_run(path_to_run_dir_or_file)
    run.history          # [{"lossprobe/step": 3, "lossprobe/loss": 0.7, "_step": 3, ...}, ...]
    run.summary["lossprobe/health"], run.tags, run.config
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path, kinds: list[int] | None = None) -> Iterator[bytes]:
    """Yield every record payload of a ``.wandb`` file, checking CRCs and chunk order
    (``kinds``, if given, collects the type of every chunk read)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or struct.unpack("<H", data[4:6])[0] != 0xBEE1 or data[6] != 0:
        raise ValueError(f"{path}: not a wandb 0.x transaction log (header {data[:7]!r})")
    pos, parts = HEADER, None
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:                 # block trailer: padding
            pos += left
            continue
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if crc == 0 and n == 0 and kind == 0:   # zero-filled tail (preallocated / padded)
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + n]
        if len(chunk) < n or zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"{path}: bad record at byte {pos}")
        pos += HEADER + n
        if kinds is not None:
            kinds.append(kind)
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind in (MIDDLE, LAST) and parts is not None:
            parts.append(chunk)
            if kind == LAST:
                yield b"".join(parts)
                parts = None
        else:
            raise ValueError(f"{path}: unexpected record type {kind} at byte {pos}")


def iter_records(path: str | Path):
    """Yield ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb
    for payload in iter_payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def _items(items) -> dict[str, Any]:
    """History/summary items as a dict; nested items (a Table's reference, a chart) as dicts."""
    out: dict[str, Any] = {}
    for it in items:
        value = json.loads(it.value_json)
        if it.key:
            out[it.key] = value
            continue
        *outer, last = list(it.nested_key)
        d = out
        for k in outer:
            d = d.setdefault(k, {})
        d[last] = value
    return out


@dataclass
class WandbRun:
    """What a run file says: history rows, final summary, tags, config, alerts."""
    id: str = ""
    tags: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    alerts: list[Any] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)   # define_metric: name or glob -> step_metric
    record_types: list[str] = field(default_factory=list)

    dir: Path | None = None

    def table(self, key: str) -> dict[str, Any]:
        """The last ``wandb.Table`` logged under ``key``, as W&B wrote it to ``files/``:
        ``{"columns": [...], "data": [[...], ...]}``."""
        ref = self.summary[key]
        return json.loads((self.dir / "files" / ref["path"]).read_text())

    def series(self, key: str, step_key: str = "lossprobe/step") -> list[tuple[Any, Any]]:
        """(step, value) of every history row that has ``key``."""
        return [(row.get(step_key), row[key]) for row in self.history if key in row]


def run_file(path: str | Path) -> Path:
    """The ``run-<id>.wandb`` file of a run directory (or the path itself if it is one)."""
    p = Path(path)
    if p.is_file():
        return p
    found = sorted(p.glob("run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb in {p}, found {found}")
    return found[0]


def read_run(path: str | Path, timeout: float = 15.0) -> WandbRun:
    """Read a finished run (directory or ``.wandb`` file) into a :class:`WandbRun`.

    ``run.finish()`` returns before wandb-core has written the last records, so this waits
    (up to ``timeout`` s) until the file holds the run's ``exit`` record and stops growing.
    """
    f = run_file(path)
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        now = f.stat().st_size
        if now == size:
            try:
                run = _parse(f)
                if "exit" in run.record_types:
                    return run
            except ValueError:
                pass                      # a record still being written
        if time.monotonic() > deadline:
            return _parse(f)
        size = now
        time.sleep(0.1)


def _parse(f: Path) -> WandbRun:
    run = WandbRun(dir=f.parent)
    for rec in iter_records(f):
        kind = rec.WhichOneof("record_type")
        run.record_types.append(kind)
        if kind == "run":
            run.id = rec.run.run_id or run.id
            run.tags = list(rec.run.tags)
            for it in rec.run.config.update:
                run.config[it.key] = json.loads(it.value_json)
        elif kind == "history":
            run.history.append(_items(rec.history.item))
        elif kind == "summary":
            run.summary.update(_items(rec.summary.update))
            for it in rec.summary.remove:
                run.summary.pop(it.key, None)
        elif kind == "config":
            for it in rec.config.update:
                run.config[it.key] = json.loads(it.value_json)
        elif kind == "metric":
            run.metrics[rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
        elif kind == "alert":
            run.alerts.append(rec.alert)
    return run
