"""MLflow sink: health tags to filter runs by, metrics with steps, and the diagnosis report.

Publish a probe's findings into MLflow::

    import lossprobe
    probe = lossprobe.attach(model, sinks=["mlflow"])        # the active run, or a new one
    ...train...
    probe.detach()

    # or with options, inside a run you started yourself (lossprobe never ends your run)
    from lossprobe.integrations.mlflow import MlflowSink
    with mlflow.start_run(run_name="baseline"):
        with lossprobe.attach(model, sinks=["console", MlflowSink()]):
            train()

Find runs afterwards, with MLflow's own search::

    from lossprobe.integrations.mlflow import find_runs, filter_string
    find_runs("my-experiment", diagnosis="exploding_gradients")      # -> [mlflow Run, ...]
    filter_string(health="critical")          # "tags.`lossprobe.health` = 'critical'"

What lands in the run
---------------------
Tags, rewritten at every flush (so a running job is searchable while it trains):

* ``lossprobe.health``: ``healthy`` | ``warning`` | ``critical`` -- the worst severity of every
  finding raised so far. Health never improves during a run: a run that blew up at step 300
  and recovered stays ``critical``, because "did anything go wrong?" is what a filter over
  thousands of runs asks. What is wrong *now* is in ``lossprobe.active_diagnoses``.
* ``lossprobe.diagnoses``: sorted, comma-separated codes ever raised;
  ``lossprobe.active_diagnoses``: the codes still firing at the last flush.
* ``lossprobe.diagnosis.<code>`` = severity, one per code ever raised;
  ``lossprobe.first_step.<code>`` / ``lossprobe.last_step.<code>``: when it began and when it
  last fired. These are tags, not params, because MLflow params cannot change once logged.
* ``lossprobe.root_cause``: the code to start from (empty when there is none); the findings it
  explains still carry their own ``lossprobe.diagnosis.<code>`` tags, so every filter works.
* ``lossprobe.framework``, ``lossprobe.version``, ``lossprobe.source`` (``probe`` here,
  ``posthoc`` for runs tagged later by ``lossprobe tag``), ``lossprobe.run_key`` (an id the
  sink uses to find its run again when uploading spooled records).
* On a run the sink creates: MLflow's context tags (``mlflow.user``, ``mlflow.source.name`` /
  ``.type``, ``mlflow.source.git.commit`` in a git checkout), as ``mlflow.start_run`` sets
  them, and the run's Description (``mlflow.note.content``): the health, the root cause, the
  fix to try first and the findings in a few lines, kept current at every flush. A run you
  started keeps its own description unless ``MlflowSink(description=True)``.

Params (once, at attach): the probe's Config as ``lossprobe.<field>`` (``params=False`` skips).

To see health in the experiment's runs table, add the tag as a column: **Columns** (above the
table) -> **Tags** -> tick ``lossprobe.health`` (and ``lossprobe.root_cause``).

Metrics: every row the probe computes (``lossprobe/loss``, ``lossprobe/grad_norm``, per-layer
``lossprobe/grad_norm/<layer>``, ``lossprobe/update_ratio/...``, ``lossprobe/dead_fraction/...``,
``lossprobe/val_loss``...) with its training step, sent as ``log-batch`` requests: one
request per flush (up to 1000 values), never one per metric. A per-layer name keeps the layer's
path and adds its type where the path is a bare index (``lossprobe/dead_fraction/1.ReLU``,
``lossprobe/grad_norm/0.Linear.weight``). Characters MLflow refuses in a metric name become ``_``. Non-finite values: NaN is stored as NaN (charts show a gap), and
+-Inf is sent as NaN too by default (``nonfinite="nan"``), because MLflow's SQL stores clamp
Inf to +-1.8e308, which flattens every chart it appears on; whether it was NaN or Inf is in the
finding's evidence. ``nonfinite="keep"`` sends Inf as is, ``"drop"`` leaves those points out.

Artifacts at the end: ``lossprobe/findings.json`` (the full report: findings with evidence,
causes and fixes, curves, config) and ``lossprobe/report.html`` (self-contained, with plots).

A slow or dead tracking server
------------------------------
Training never waits for MLflow. ``on_flush`` puts the flush on a bounded queue and returns;
a background thread sends it, checking ``<uri>/health`` first for http(s) servers (MLflow's
own client would otherwise retry a dead server for minutes) and retrying with exponential
backoff. When a send fails, the sink switches to spooling: records are appended to a local
JSONL file (``spool_dir``, default ``$LOSSPROBE_SPOOL_DIR`` or ``~/.cache/lossprobe/spool``),
one warning names the file and the upload command, and every ``retry_interval`` seconds the
server is probed again; once it answers, the spool is replayed and removed. If the queue is
full (a server that hangs), the training thread appends to the same file instead of waiting.
At close the sink waits at most ``close_timeout`` seconds and then the sender ends: no request
is made after ``probe.detach()`` returns, so a server that comes back later never sees a late
run or a stale tag from it. (Requests to a server go out one at a time with a timeout,
``min(10 s, close_timeout / 2)``, and no retries hidden inside them; the sender retries between
requests.) Whatever is still unsent is in the spool, and a last warning gives the command::

    python -m lossprobe.integrations.mlflow upload ~/.cache/lossprobe/spool/mlflow-....jsonl

Uploading is idempotent: metric points keep their original timestamps (MLflow 3's SQL stores
ignore exact duplicates; MLflow 2 refuses a repeated upload and changes nothing), a run created
from a spool is found again by its ``lossprobe.run_key`` tag, and only the newest tag set is applied.
"""
from __future__ import annotations

import argparse
import atexit
import itertools
import json
import logging
import math
import os
import posixpath
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from lossprobe.sinks import FinalReport, FlushUpdate, RunInfo, Sink
from lossprobe.tags import PREFIX

log = logging.getLogger("lossprobe")

__all__ = ["MlflowSink", "find_runs", "filter_string", "upload_spool", "probe_tags", "main"]

HEALTH_TAG = f"{PREFIX}.health"
DESCRIPTION_TAG = "mlflow.note.content"     # the run's Description in the MLflow UI (Markdown)
RUN_KEY_TAG = f"{PREFIX}.run_key"
SOURCE_TAG = f"{PREFIX}.source"
UPLOAD_COMMAND = "python -m lossprobe.integrations.mlflow upload"
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED",
                    "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS"}


# --------------------------------------------------------------------------- tags
def probe_tags(tags: dict[str, str], findings: Iterable[Any], source: str = "probe") -> dict[str, str]:
    """The tracker contract tags plus what MLflow adds: source, active codes, first/last step per code."""
    out = dict(tags)
    findings = list(findings)
    out[SOURCE_TAG] = source
    out[f"{PREFIX}.active_diagnoses"] = ",".join(sorted(f.code for f in findings if getattr(f, "active", True)))
    for f in findings:
        out[f"{PREFIX}.first_step.{f.code}"] = str(int(f.step))
        out[f"{PREFIX}.last_step.{f.code}"] = str(int(max(f.last_step, f.step)))
    return out


def run_description(findings: Sequence[Any], health: str, last_step: int | None = None, limit: int = 12) -> str:
    """The run's Description (Markdown): the health, the root cause and the fix to try first,
    then the findings, root causes first with what they explain indented under them.

    >>> print(run_description([], "healthy", 299))
    **lossprobe: healthy** after 300 steps: no warnings.
    """
    from lossprobe.readout import ordered
    from lossprobe.rootcause import attribute

    findings = list(findings)
    steps = f" after {int(last_step) + 1} steps" if last_step is not None and last_step >= 0 else ""
    roots = attribute(findings)
    if not roots:
        return f"**lossprobe: {health}**{steps}: no warnings."
    root = roots[0]
    more = f" (and {len(roots) - 1} other independent cause{'s' if len(roots) > 2 else ''})" if len(roots) > 1 else ""
    lines = [f"**lossprobe: {health}**{steps}. Root cause: `{root.code}` ({root.severity}, from step {root.step}){more}.",
             ""]
    if root.fix_first:
        lines += [f"Fix first: {root.fix_first}", ""]
    rows = ordered(findings, roots)
    for row in rows[:limit]:
        f = row.finding
        why = f", caused by `{f.caused_by}`" if f.caused_by else ""
        lines.append(f"{'  ' * row.depth}- `{f.code}` {f.severity}, steps {f.step}-{max(f.last_step, f.step)}, "
                     f"{row.status}{why}")
    if len(rows) > limit:
        lines.append(f"- ... and {len(rows) - limit} more")
    lines += ["", "Evidence, causes and fixes: artifact `lossprobe/report.html`."]
    return "\n".join(lines)


def config_params(config: dict[str, Any]) -> dict[str, str]:
    """The probe's Config as MLflow params ``lossprobe.<field>`` (``extra`` as
    ``lossprobe.extra.<key>``), values cut to MLflow's oldest limit of 500 characters."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update({f"{PREFIX}.{k}.{kk}": str(vv)[:500] for kk, vv in v.items()})
        else:
            out[f"{PREFIX}.{k}"] = str(v)[:500]
    return out


def _context_tags() -> dict[str, str]:
    """MLflow's own context tags for a run the sink creates (user, source name and type, git
    commit when present), as ``mlflow.start_run`` would set them."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
        return {str(k): str(v) for k, v in resolve_tags().items()}
    except Exception:  # an MLflow without the registry, or a provider that failed: no context tags
        return {}


# --------------------------------------------------------------------------- values
def _enc(v: Any) -> Any:
    """A float as JSON: non-finite values as the strings 'nan', 'inf', '-inf'."""
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _dec(v: Any) -> float:
    return float(v)


_BAD_CHARS = re.compile(r"[^/\w.\- ]")


def metric_key(name: str) -> str:
    """``name`` made acceptable to MLflow (letters, digits, ``_ - . / space``; no ``..`` segments)."""
    name = _BAD_CHARS.sub("_", str(name))
    parts = [("_" if p in (".", "..") else p) for p in name.split("/") if p]
    key = "/".join(parts) or "_"
    return key if posixpath.normpath(key) == key else key.replace(".", "_")


def _to_jsonable(record: dict) -> dict:
    out = dict(record)
    if "rows" in out:
        out["rows"] = [[int(s), {k: _enc(v) for k, v in vals.items()}] for s, vals in out["rows"]]
    return out


# --------------------------------------------------------------------------- spool file
class _Spool:
    """An append-only JSONL file of unsent records, shared by the worker and (on a full queue)
    the training thread. The lock is only ever held for file I/O."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.written = 0

    def append(self, records: Sequence[dict]) -> None:
        text = "".join(json.dumps(_to_jsonable(r), separators=(",", ":")) + "\n" for r in records)
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(text)
            self.written += len(records)

    def size(self) -> int:
        with self.lock:
            return self.path.stat().st_size if self.path.exists() else 0

    def read(self, limit: int | None = None) -> list[dict]:
        """Records in the first ``limit`` bytes (a torn last line from a crash is skipped)."""
        with self.lock:
            if not self.path.exists():
                return []
            with self.path.open("rb") as fh:
                data = fh.read() if limit is None else fh.read(limit)
        return _parse_lines(data)

    def consume(self, n_bytes: int) -> None:
        """Drop the first ``n_bytes`` (they were uploaded); delete the file when nothing is left."""
        with self.lock:
            if not self.path.exists():
                return
            rest = self.path.read_bytes()[n_bytes:]
            if rest.strip():
                tmp = self.path.with_suffix(".tmp")
                tmp.write_bytes(rest)
                os.replace(tmp, self.path)
            else:
                self.path.unlink()

    def count(self) -> int:
        return len(self.read())


def _parse_lines(data: bytes) -> list[dict]:
    out = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# --------------------------------------------------------------------------- applying records
def _transient(exc: BaseException) -> bool:
    """Could sending again later succeed? (server down/slow/overloaded, database locked)"""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    try:
        import requests
        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover
        pass
    code = getattr(exc, "error_code", None)
    if code is not None:
        return code not in _PERMANENT_CODES
    name = type(exc).__name__
    return name in ("OperationalError", "DisconnectionError")


class _Stopped(Exception):
    """The sink was closed: no further request may start."""


class _ClientApi:
    """The few MLflow calls the publisher makes, through ``MlflowClient`` (any store)."""

    def __init__(self, client: Any):
        self.client = client

    def experiment_id(self, name: str) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def create_experiment(self, name: str) -> str:
        return str(self.client.create_experiment(name))

    def find_run(self, experiment_id: str, key: str) -> str | None:
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
        return found[0].info.run_id if found else None

    def create_run(self, experiment_id: str, start_ms: int | None, run_name: str | None,
                   tags: dict[str, str]) -> str:
        return self.client.create_run(experiment_id, start_time=start_ms, run_name=run_name, tags=tags).info.run_id

    def log_batch(self, run_id: str, metrics: Sequence[tuple[str, float, int, int]] = (),
                  params: Sequence[tuple[str, str]] = (), tags: Sequence[tuple[str, str]] = ()) -> None:
        from mlflow.entities import Metric, Param, RunTag
        self.client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=[Param(*p) for p in params],
                              tags=[RunTag(*t) for t in tags])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def terminate(self, run_id: str, status: str, end_ms: int | None) -> None:
        self.client.set_terminated(run_id, status, end_time=end_ms)


class _RestApi(_ClientApi):
    """The same calls against an MLflow server as single HTTP requests with a timeout and no
    retries of their own. MLflow's client retries a dead server for about four minutes inside
    one call; the sender must be able to stop at close, so it retries itself, between requests.
    Credentials come from the client's own store (tokens, basic auth, TLS settings all apply)."""

    def __init__(self, client: Any, host_creds: Any, timeout: float):
        super().__init__(client)
        self.host_creds = host_creds
        self.timeout = timeout

    def _call(self, endpoint: str, body: dict, method: str = "POST") -> dict:
        from mlflow.utils.rest_utils import http_request, verify_rest_response
        kw = {"params": body} if method == "GET" else {"json": body}
        resp = http_request(self.host_creds(), f"/api/2.0/mlflow/{endpoint}", method, max_retries=0,
                            backoff_factor=0, timeout=self.timeout, **kw)
        verify_rest_response(resp, endpoint)
        return json.loads(resp.text or "{}")

    def experiment_id(self, name: str) -> str | None:
        try:
            return str(self._call("experiments/get-by-name", {"experiment_name": name}, "GET")["experiment"]
                       ["experiment_id"])
        except Exception as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def create_experiment(self, name: str) -> str:
        return str(self._call("experiments/create", {"name": name})["experiment_id"])

    def find_run(self, experiment_id: str, key: str) -> str | None:
        runs = self._call("runs/search", {"experiment_ids": [experiment_id], "max_results": 1,
                                          "filter": f"tags.`{RUN_KEY_TAG}` = '{key}'"}).get("runs", [])
        return runs[0]["info"]["run_id"] if runs else None

    def create_run(self, experiment_id: str, start_ms: int | None, run_name: str | None,
                   tags: dict[str, str]) -> str:
        body: dict[str, Any] = {"experiment_id": experiment_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if start_ms is not None:
            body["start_time"] = int(start_ms)
        if run_name:
            body["run_name"] = run_name
        if "mlflow.user" in tags:
            body["user_id"] = tags["mlflow.user"]
        return self._call("runs/create", body)["run"]["info"]["run_id"]

    def log_batch(self, run_id: str, metrics: Sequence[tuple[str, float, int, int]] = (),
                  params: Sequence[tuple[str, str]] = (), tags: Sequence[tuple[str, str]] = ()) -> None:
        self._call("runs/log-batch", {
            "run_id": run_id,
            "metrics": [{"key": k, "value": _json_float(v), "timestamp": int(ts), "step": int(st)}
                        for k, v, ts, st in metrics],
            "params": [{"key": k, "value": v} for k, v in params],
            "tags": [{"key": k, "value": v} for k, v in tags]})

    def terminate(self, run_id: str, status: str, end_ms: int | None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = int(end_ms)
        self._call("runs/update", body)


def _json_float(v: float) -> Any:
    """A metric value as MLflow's REST API takes it (protobuf JSON: non-finite as strings)."""
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _api_for(client: Any, timeout: float | None) -> _ClientApi:
    """Bounded REST calls for an MLflow server (``timeout`` given), the client for other stores."""
    if timeout is not None:
        try:
            from mlflow.store.tracking.rest_store import RestStore
            store = client._tracking_client.store
            if isinstance(store, RestStore):
                return _RestApi(client, store.get_host_creds, timeout)
        except Exception:  # another MLflow layout: its client still works, only without the bound
            pass
    return _ClientApi(client)


class _Publisher:
    """Applies outbox records to one tracking store. Used by the sink's worker thread and by
    :func:`upload_spool`, so live sending and later uploading behave the same.

    ``stop``: once set, no further request starts (the one in flight, if any, is bounded by
    the API's timeout); :class:`_Stopped` is raised instead."""

    def __init__(self, api: _ClientApi, nonfinite: str = "nan", stop: threading.Event | None = None):
        self.api = api
        self.nonfinite = nonfinite
        self.stop = stop
        self.run_ids: dict[str, str] = {}
        self.tag_seq: dict[str, int] = {}
        self.sent_tags: dict[str, dict[str, str]] = {}
        self.experiments: dict[str, str] = {}
        self.requests = 0
        self.metrics_sent = 0
        self.notes: list[str] = []

    def _request(self, fn, *args) -> Any:
        if self.stop is not None and self.stop.is_set():
            raise _Stopped()
        self.requests += 1
        return fn(*args)

    def run_id(self, ref: dict) -> str:
        key = ref["key"]
        if ref.get("run_id"):
            self.run_ids[key] = ref["run_id"]
        if key in self.run_ids:
            return self.run_ids[key]
        exp_id = self._experiment_id(ref)
        rid = self._request(self.api.find_run, exp_id, key)
        if rid is None:
            rid = self._request(self.api.create_run, exp_id, ref.get("start_ms"), ref.get("run_name"),
                                {**ref.get("context", {}), RUN_KEY_TAG: key})
        self.run_ids[key] = rid
        ref["run_id"] = rid
        return rid

    def _experiment_id(self, ref: dict) -> str:
        if ref.get("experiment_id"):
            return str(ref["experiment_id"])
        name = ref.get("experiment")
        if not name:
            return "0"
        if name not in self.experiments:
            exp_id = self._request(self.api.experiment_id, name)
            if exp_id is None:
                try:
                    exp_id = self._request(self.api.create_experiment, name)
                except _Stopped:
                    raise
                except Exception as exc:  # created meanwhile by another process
                    exp_id = self._request(self.api.experiment_id, name)
                    if exp_id is None:
                        raise exc
            self.experiments[name] = exp_id
        return self.experiments[name]

    def _value(self, v: Any) -> float | None:
        x = _dec(v)
        if math.isinf(x):
            if self.nonfinite == "nan":
                return math.nan
            if self.nonfinite == "drop":
                return None
        elif math.isnan(x) and self.nonfinite == "drop":
            return None
        return x

    def apply(self, records: Sequence[dict]) -> None:
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(r["run"]["key"], []).append(r)
        for key, recs in groups.items():
            run_id = self.run_id(recs[0]["run"])
            for r in recs:
                if r["kind"] == "params":
                    self._params(run_id, r["params"])
            metrics = []
            for r in recs:
                if r["kind"] != "metrics":
                    continue
                for step, vals in r["rows"]:
                    for name, v in vals.items():
                        x = self._value(v)
                        if x is not None:
                            metrics.append((metric_key(name), x, int(r["ts"]), int(step)))
            # only the newest tag set matters (each one is complete); older ones are skipped
            newest = max((r for r in recs if r["kind"] == "tags"), key=lambda r: r["seq"], default=None)
            tags: dict[str, str] = {}
            if newest is not None and newest["seq"] > self.tag_seq.get(key, -1):
                sent = self.sent_tags.get(key, {})
                tags = {k: str(v) for k, v in newest["tags"].items() if sent.get(k) != str(v)}
            tag_list = list(tags.items())
            # MLflow's limits per request: 100 tags, 1000 metrics + tags
            while tag_list or metrics:
                tchunk, tag_list = tag_list[:100], tag_list[100:]
                room = 1000 - len(tchunk)
                mchunk, metrics = metrics[:room], metrics[room:]
                self._request(self.api.log_batch, run_id, mchunk, (), tchunk)
                self.metrics_sent += len(mchunk)
            if newest is not None and newest["seq"] > self.tag_seq.get(key, -1):
                self.sent_tags.setdefault(key, {}).update(tags)
                self.tag_seq[key] = newest["seq"]
            for r in recs:
                if r["kind"] == "artifact":
                    self._request(self.api.log_text, run_id, r["text"], r["path"])
            for r in recs:
                if r["kind"] == "end":
                    self._request(self.api.terminate, run_id, r.get("status", "FINISHED"), r.get("ts"))

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        """Params are write-once in MLflow: a run that already holds other values for them (a
        second probe in one run) keeps its own, and that is said once, not retried."""
        items = list(params.items())
        try:
            for i in range(0, len(items), 100):
                self._request(self.api.log_batch, run_id, (), items[i:i + 100], ())
        except _Stopped:
            raise
        except Exception as exc:
            if _transient(exc):
                raise
            self.notes.append(f"config params not logged ({type(exc).__name__}: {str(exc)[:200]})")


def _reachable(uri: str | None, timeout: float) -> bool:
    """A fast liveness check for http(s) tracking servers; other stores are assumed up."""
    if not uri or not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True          # something answered (a proxy without /health): let the client try
    except Exception:
        return False


# --------------------------------------------------------------------------- the sink
class MlflowSink(Sink):
    """Publish lossprobe's tags, metrics and report to MLflow, off the training thread.

    ``tracking_uri``: default ``mlflow.get_tracking_uri()``. ``experiment``: experiment name
    for a run this sink starts (default: the one set with ``mlflow.set_experiment``, else
    ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID``, else MLflow's default experiment).
    ``run_name``: name of a run this sink starts. ``run_id``: publish into this existing run.
    Without ``run_id``, the active run (``mlflow.start_run``) of the attaching thread is used
    when its tracking URI matches; otherwise the sink starts a run, and ends it (FINISHED) at
    close. It never ends a run it did not start.

    ``spool_dir``: where unsent records are written (see the module docstring).
    ``queue_size``: flushes buffered in memory before the training thread writes to the spool.
    ``retries``/``backoff``: attempts per batch, doubling the wait from ``backoff`` seconds.
    ``retry_interval``: seconds between probes of a server found down. ``close_timeout``: the
    longest ``close`` waits for the queue to drain. ``nonfinite``: ``"nan"`` | ``"keep"`` | ``"drop"``.
    ``artifacts``: log findings.json and report.html at close. ``params``: log the Config as
    params ``lossprobe.<field>`` at attach. ``description``: keep the run's Description
    (``mlflow.note.content``) current; ``None`` (default) does so only on a run the sink creates.

    Example::

        sink = MlflowSink(tracking_uri="http://127.0.0.1:5000", experiment="digits", run_name="lr=5")
        with lossprobe.attach(model, sinks=[sink]) as probe:
            train()
        print(sink.run_id, sink.stats)
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None, spool_dir: str | os.PathLike | None = None, *,
                 run_id: str | None = None, queue_size: int = 256, retries: int = 3, backoff: float = 0.5,
                 retry_interval: float = 5.0, close_timeout: float = 30.0, health_timeout: float = 2.0,
                 nonfinite: str = "nan", artifacts: bool = True, params: bool = True,
                 description: bool | None = None):
        if nonfinite not in ("nan", "keep", "drop"):
            raise ValueError(f"nonfinite must be 'nan', 'keep' or 'drop', got {nonfinite!r}")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.spool_dir = Path(spool_dir or os.environ.get("LOSSPROBE_SPOOL_DIR")
                              or Path.home() / ".cache" / "lossprobe" / "spool")
        self.retries = max(1, int(retries))
        self.backoff = float(backoff)
        self.retry_interval = float(retry_interval)
        self.close_timeout = float(close_timeout)
        # one request to a server never takes longer than this, so the sender can always end
        # within close_timeout: the queue gets the rest of it, the last request this much
        self.request_timeout = min(10.0, self.close_timeout / 2)
        self.health_timeout = float(health_timeout)
        self.nonfinite = nonfinite
        self.artifacts = artifacts
        self.params = params
        self.description = description
        self.owns_run = False
        self._given_run_id = run_id
        self._key = uuid.uuid4().hex
        self._ref: dict[str, Any] = {}
        self._seq = itertools.count()
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub: _Publisher | None = None
        self._down = False
        self._next_probe = 0.0
        self._spool_dirty = False
        self._inflight: list[dict] | None = None
        self._warned = False
        self._closed = False
        self._spool: _Spool | None = None
        self.messages: list[str] = []

    # -- public state ---------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None until the run exists on the server)."""
        return self._ref.get("run_id")

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool else None

    @property
    def stats(self) -> dict[str, int]:
        """Requests made, metric values sent, records written to the spool."""
        pub = self._pub
        return {"requests": pub.requests if pub else 0, "metrics_sent": pub.metrics_sent if pub else 0,
                "spooled": self._spool.written if self._spool else 0}

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until everything handed to the sink so far was sent or spooled (True), or
        ``timeout`` seconds passed (False). Call ``probe.flush()`` first to include the
        steps since the last flush."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks:
            if time.monotonic() > deadline or self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return True

    # -- Sink interface -------------------------------------------------------------
    def open(self, info: RunInfo) -> None:
        import mlflow

        uri = self.tracking_uri or mlflow.get_tracking_uri()
        run_id = self._given_run_id
        if run_id is None:
            active = mlflow.active_run()
            if active is not None and (self.tracking_uri is None or _same_uri(self.tracking_uri, mlflow.get_tracking_uri())):
                run_id = active.info.run_id
        self.owns_run = run_id is None
        exp_id = None
        if self.owns_run and not self.experiment:
            from mlflow.tracking import fluent
            exp_id = getattr(fluent, "_active_experiment_id", None) or os.environ.get("MLFLOW_EXPERIMENT_ID")
        self._ref = {"key": self._key, "run_id": run_id, "tracking_uri": uri,
                     "experiment": self.experiment or (None if exp_id else os.environ.get("MLFLOW_EXPERIMENT_NAME")),
                     "experiment_id": exp_id, "run_name": self.run_name, "start_ms": _now_ms(),
                     "context": _context_tags() if self.owns_run else {}}
        if self.description is None:
            self.description = self.owns_run      # never overwrite the description of the user's own run
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._spool = _Spool(self.spool_dir / f"mlflow-{stamp}-{os.getpid()}-{self._key[:8]}.jsonl")
        self._framework = info.framework
        first = {"lossprobe.health": "healthy", "lossprobe.diagnoses": "", f"{PREFIX}.framework": info.framework,
                 f"{PREFIX}.version": info.version}
        recs = [self._record("tags", tags=self._tags(first, [], "healthy", None))]
        if self.params and info.config:
            recs.append(self._record("params", params=config_params(info.config)))
        self._submit(recs)
        self._thread = threading.Thread(target=self._worker, name="lossprobe-mlflow", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    def on_flush(self, update: FlushUpdate) -> None:
        recs = []
        if update.metrics:
            recs.append(self._record("metrics", rows=update.metrics, ts=_now_ms()))
        recs.append(self._record("tags", tags=self._tags(update.tags, update.findings, update.health,
                                                          update.last_step)))
        self._submit(recs)

    def close(self, final: FinalReport) -> None:
        if self._closed or self._thread is None:
            return
        recs = [self._record("tags", tags=self._tags(final.tags, final.findings, final.health,
                                                     final.report.get("last_step")))]
        if self.artifacts:
            recs.append(self._record("artifact", path="lossprobe/findings.json",
                                     text=json.dumps(_json_safe(final.report), indent=2, default=str)))
            recs.append(self._record("artifact", path="lossprobe/report.html", text=final.html))
        if self.owns_run:
            recs.append(self._record("end", status="FINISHED", ts=_now_ms()))
        self._submit(recs)
        self._finish(self.close_timeout)

    # -- internals: training-thread side ------------------------------------------
    def _tags(self, tags: dict[str, str], findings: list, health: str, last_step: int | None) -> dict[str, str]:
        out = probe_tags(tags, findings)
        if self.description:
            out[DESCRIPTION_TAG] = run_description(findings, health, last_step)
        return out

    def _record(self, kind: str, **fields: Any) -> dict:
        return {"kind": kind, "seq": next(self._seq), "run": self._ref, **fields}

    def _submit(self, records: list[dict]) -> None:
        try:
            self._q.put_nowait(records)
        except queue.Full:
            self._to_spool(records, "the send queue is full (the server is slow)")
            self._spool_dirty = True

    def _finish(self, timeout: float) -> None:
        """End the sender within ``timeout`` seconds: let the queue drain, then stop it and wait
        out the one request in flight (each is bounded by ``request_timeout``). After this
        returns no request is made: what was not confirmed sent is in the spool."""
        self._closed = True
        self._stop.set()
        last = min(self.request_timeout, timeout / 2)
        if not self._done.wait(max(timeout - last, 0.0)):
            self._abandon.set()
            inflight = self._inflight
            self._done.wait(last + 1.0)
            pending = []
            while True:
                try:
                    pending.extend(self._q.get_nowait())
                except queue.Empty:
                    break
            if inflight:
                pending = list(inflight) + pending
            if pending:
                self._to_spool(pending, f"MLflow did not answer within {timeout:g} s")
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass
        left = self._spool.count() if self._spool else 0
        if left:
            msg = (f"lossprobe: {left} MLflow records for run {self.run_id or '(not created yet)'} were not sent; "
                   f"they are in {self._spool.path}. Upload them with: {UPLOAD_COMMAND} '{self._spool.path}'")
            self.messages.append(msg)
            log.warning(msg)

    def _at_exit(self) -> None:
        if not self._closed:
            if self.owns_run:
                self._submit([self._record("end", status="FINISHED", ts=_now_ms())])
            self._finish(min(self.close_timeout, 10.0))

    def _to_spool(self, records: list[dict], why: str) -> None:
        assert self._spool is not None
        self._spool.append(records)
        if not self._warned:
            self._warned = True
            msg = (f"lossprobe: cannot publish to MLflow at {self._ref.get('tracking_uri')} ({why}); training "
                   f"continues and unsent records are kept in {self._spool.path}. They are sent automatically "
                   f"if the server comes back during training; otherwise upload them later with: "
                   f"{UPLOAD_COMMAND} '{self._spool.path}'")
            self.messages.append(msg)
            log.warning(msg)

    # -- internals: worker thread ------------------------------------------------------
    def _worker(self) -> None:
        try:
            from mlflow import MlflowClient
            client = MlflowClient(self._ref["tracking_uri"])
            self._pub = _Publisher(_api_for(client, self.request_timeout), self.nonfinite, stop=self._abandon)
        except Exception as exc:
            self._down = True
            self._note(f"cannot create an MLflow client ({type(exc).__name__}: {exc})")
        try:
            while not self._abandon.is_set():
                try:
                    batch = self._q.get(timeout=0.1)
                except queue.Empty:
                    batch = None
                if batch is None:
                    if self._stop.is_set():
                        self._drain_spool(final=True)
                        break
                    self._drain_spool(final=False)
                    continue
                # coalesce what is waiting: one log_batch carries up to 1000 values, and a
                # server's cost is mostly per request (a database commit)
                batches = [batch]
                while len(batches) < 50:
                    try:
                        batches.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                records = [r for b in batches for r in b]
                self._inflight = records
                try:
                    if self._down or self._pub is None:
                        self._to_spool(records, "the server is down")
                    else:
                        self._send(records)
                finally:
                    self._inflight = None
                    for _ in batches:
                        self._q.task_done()
        except Exception as exc:  # never let the worker die silently with records in memory
            self._note(f"publisher thread failed ({type(exc).__name__}: {exc})")
        finally:
            self._done.set()

    def _send(self, batch: list[dict]) -> None:
        assert self._pub is not None
        error: BaseException | None = None
        for attempt in range(self.retries):
            if attempt and self._abandon.wait(self.backoff * 2 ** (attempt - 1)):
                return
            try:
                if not _reachable(self._ref["tracking_uri"], self.health_timeout):
                    raise ConnectionError("no answer from the /health endpoint")
                self._pub.apply(batch)
                self._sync_ref()
                return
            except _Stopped:
                return               # closed: the batch is spooled by _finish
            except Exception as exc:
                error = exc
                if not _transient(exc):
                    self._to_spool(batch, f"MLflow rejected a batch: {type(exc).__name__}: {exc}")
                    return
        self._down = True
        self._next_probe = time.monotonic() + self.retry_interval
        self._to_spool(batch, f"{type(error).__name__}: {error}")

    def _drain_spool(self, final: bool) -> None:
        """Replay the spool when the server is (back) up; at the end, try once more."""
        if self._pub is None or self._spool is None:
            return
        if self._down:
            if not final and time.monotonic() < self._next_probe:
                return
            if not _reachable(self._ref["tracking_uri"], self.health_timeout):
                self._next_probe = time.monotonic() + self.retry_interval
                return
            self._down = False
        elif not (self._spool_dirty or final):
            return
        self._spool_dirty = False
        n = self._spool.size()
        if not n:
            return
        records = self._spool.read(n)
        try:
            for chunk in _chunks(records, 200):
                self._pub.apply(chunk)
        except _Stopped:
            return                   # closed: the spool keeps what was not confirmed
        except Exception as exc:
            if _transient(exc):
                self._down = True
                self._next_probe = time.monotonic() + self.retry_interval
            else:
                self._note(f"MLflow rejected spooled records ({type(exc).__name__}: {exc})")
            return
        self._sync_ref()
        self._spool.consume(n)
        log.info("lossprobe: MLflow is reachable again; %d spooled records uploaded", len(records))

    def _sync_ref(self) -> None:
        """After a successful send: a run created from spooled records (their own copies of the
        run reference) is ours too; what the publisher had to say is said once."""
        if self._pub is None:
            return
        if not self._ref.get("run_id") and self._key in self._pub.run_ids:
            self._ref["run_id"] = self._pub.run_ids[self._key]
        while self._pub.notes:
            self._note(self._pub.notes.pop(0))

    def _note(self, msg: str) -> None:
        self.messages.append(f"lossprobe: {msg}")
        log.warning("lossprobe: %s", msg)


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (the report already names them in evidence)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# --------------------------------------------------------------------------- uploading a spool
def upload_spool(path: str | os.PathLike, tracking_uri: str | None = None, delete: bool = True) -> dict[str, Any]:
    """Send the records of a spool file to MLflow (the server named in the file, or
    ``tracking_uri``). Safe to run twice. Returns ``{"records", "runs", "metrics", "requests"}``.

    Example::

        upload_spool("~/.cache/lossprobe/spool/mlflow-20261125-101500-4242-1a2b3c4d.jsonl")
    """
    from mlflow import MlflowClient

    p = Path(path).expanduser()
    records = _parse_lines(p.read_bytes())
    by_uri: dict[str | None, list[dict]] = {}
    for r in records:
        by_uri.setdefault(tracking_uri or r["run"].get("tracking_uri"), []).append(r)
    runs: set[str] = set()
    metrics = requests = 0
    for uri, recs in by_uri.items():
        pub = _Publisher(_ClientApi(MlflowClient(uri)))
        for chunk in _chunks(recs, 200):
            pub.apply(chunk)
        runs.update(pub.run_ids.values())
        metrics += pub.metrics_sent
        requests += pub.requests
    if delete:
        p.unlink()
    return {"records": len(records), "runs": sorted(runs), "metrics": metrics, "requests": requests}


# --------------------------------------------------------------------------- finding runs
_HEALTH = ("healthy", "warning", "critical")


def filter_string(diagnosis: str | Iterable[str] | None = None, health: str | None = None) -> str:
    """An ``mlflow.search_runs`` filter for lossprobe tags (also usable in the MLflow UI).

    ``health``: ``"healthy"``, ``"warning"``, ``"critical"`` or ``"unhealthy"`` (anything but
    healthy). ``diagnosis``: a code, or several that must all be present.

    >>> filter_string(health="critical")
    "tags.`lossprobe.health` = 'critical'"
    >>> filter_string(diagnosis="exploding_gradients")
    "tags.`lossprobe.diagnosis.exploding_gradients` LIKE '%'"
    >>> filter_string(health="unhealthy")
    "tags.`lossprobe.health` != 'healthy'"

    ``LIKE '%'`` matches every run that has the tag, on MLflow 2 and 3 alike (``IS NOT NULL``
    says the same, on MLflow 3 only). Other filters that work (SQL stores):
    ``tags.`lossprobe.diagnoses` LIKE '%nan_loss%'``, ``tags.`lossprobe.diagnosis.nan_loss` =
    'critical'`` and, on MLflow 3, ``tags.`lossprobe.health` IS NULL`` for runs never probed.
    MLflow does not accept ``IN (...)`` on tags.
    """
    parts = []
    if health is not None:
        if health in ("unhealthy", "!healthy"):
            parts.append(f"tags.`{HEALTH_TAG}` != 'healthy'")
        elif health in _HEALTH:
            parts.append(f"tags.`{HEALTH_TAG}` = '{health}'")
        else:
            raise ValueError(f"health must be one of {_HEALTH} or 'unhealthy', got {health!r}")
    codes = [diagnosis] if isinstance(diagnosis, str) else list(diagnosis or [])
    for code in codes:
        if not re.fullmatch(r"[a-z0-9_]+", code):
            raise ValueError(f"not a diagnosis code: {code!r}")
        parts.append(f"tags.`{PREFIX}.diagnosis.{code}` LIKE '%'")
    return " AND ".join(parts)


def find_runs(experiment: str | Sequence[str], diagnosis: str | Iterable[str] | None = None,
              health: str | None = None, tracking_uri: str | None = None,
              max_results: int | None = None) -> list[Any]:
    """Runs of ``experiment`` (a name or id, or several) with a diagnosis and/or health.

    Example::

        for run in find_runs("digits", diagnosis="nan_loss"):
            print(run.info.run_id, run.data.tags["lossprobe.diagnoses"])
        find_runs("digits", health="unhealthy")      # warning or critical
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = _experiment_ids(client, [experiment] if isinstance(experiment, str) else list(experiment))
    if not ids:
        return []
    return _search_all(client, ids, filter_string(diagnosis, health), max_results)


def _experiment_ids(client: Any, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(str(name))
        if exp is None and str(name).isdigit():
            try:
                exp = client.get_experiment(str(name))
            except Exception:
                exp = None
        if exp is not None:
            ids.append(exp.experiment_id)
    return ids


def _search_all(client: Any, ids: list[str], filt: str, max_results: int | None = None) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(ids, filt, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results is not None and len(out) >= max_results):
            break
    return out[:max_results] if max_results is not None else out


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lossprobe.integrations.mlflow upload SPOOL... | find --experiment NAME ...``"""
    ap = argparse.ArgumentParser(prog="python -m lossprobe.integrations.mlflow",
                                 description="lossprobe's MLflow helpers.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="send records spooled while the tracking server was unreachable")
    up.add_argument("spool", nargs="+", help="spool file(s) (*.jsonl)")
    up.add_argument("--tracking-uri", default=None, help="override the server recorded in the file")
    up.add_argument("--keep", action="store_true", help="keep the file after a successful upload")
    fd = sub.add_parser("find", help="list runs by lossprobe health / diagnosis")
    fd.add_argument("--experiment", required=True, action="append")
    fd.add_argument("--diagnosis", action="append", default=None)
    fd.add_argument("--health", default=None)
    fd.add_argument("--tracking-uri", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "upload":
        rc = 0
        for path in args.spool:
            if not Path(path).expanduser().exists():
                print(f"{path}: not found (already uploaded?)", file=sys.stderr)
                rc = 1
                continue
            try:
                res = upload_spool(path, tracking_uri=args.tracking_uri, delete=not args.keep)
            except Exception as exc:
                print(f"{path}: upload failed ({type(exc).__name__}: {exc}); the file is kept", file=sys.stderr)
                rc = 1
                continue
            print(f"{path}: {res['records']} records, {res['metrics']} metric values -> run(s) "
                  f"{', '.join(res['runs'])}" + ("" if args.keep else "; file removed"))
        return rc
    filt = filter_string(args.diagnosis, args.health)
    print(f"filter: {filt or '(none)'}")
    for run in find_runs(args.experiment, args.diagnosis, args.health, args.tracking_uri):
        tags = run.data.tags
        print(f"{run.info.run_id}  {run.info.run_name or '':<24}  {tags.get(HEALTH_TAG, '-'):<8}  "
              f"{tags.get(f'{PREFIX}.diagnoses', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
