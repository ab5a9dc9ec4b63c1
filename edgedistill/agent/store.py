"""An append-only SQLite store of latency measurements, shared by local runs and device agents.

Every profile of a model on a device appends rows; nothing is ever updated or deleted, so a
second run of the same model is a second set of rows and the history of a device survives.
:meth:`ResultsStore.latest` picks the newest row per (model, device, runtime, precision, batch,
threads, versions) for tables and Pareto plots. Only the standard library's :mod:`sqlite3` is
used; each call opens its own connection, so one store may be used from several threads (or
processes) at once, and WAL mode lets readers run while a writer appends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgedistill.errors import DataError

SCHEMA_VERSION = 1

_COLUMNS = (
    "model_sha256", "model_name", "device_id", "device_name", "runtime", "precision", "batch",
    "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "versions",
    "environment", "engine_build_s", "memory_mb", "run_id", "source", "recorded_at",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_sha256 TEXT NOT NULL,
    model_name TEXT NOT NULL,
    device_id TEXT NOT NULL,
    device_name TEXT NOT NULL,
    runtime TEXT NOT NULL,
    precision TEXT NOT NULL,
    batch INTEGER NOT NULL,
    threads INTEGER NOT NULL,
    p50_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    mean_ms REAL NOT NULL,
    throughput_per_s REAL NOT NULL,
    versions TEXT NOT NULL,
    environment TEXT NOT NULL,
    engine_build_s REAL,
    memory_mb REAL,
    run_id TEXT NOT NULL,
    source TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_device ON measurements (device_id);
CREATE INDEX IF NOT EXISTS measurements_model ON measurements (model_sha256);
CREATE INDEX IF NOT EXISTS measurements_run ON measurements (run_id);
CREATE TRIGGER IF NOT EXISTS measurements_no_update BEFORE UPDATE ON measurements
BEGIN SELECT RAISE(ABORT, 'measurements are append-only'); END;
CREATE TRIGGER IF NOT EXISTS measurements_no_delete BEFORE DELETE ON measurements
BEGIN SELECT RAISE(ABORT, 'measurements are append-only'); END;
"""


@dataclass(frozen=True)
class Measurement:
    """One latency measurement of one model on one device with one runtime setting.

    Attributes:
        model_sha256: sha256 of the model file that was measured (identifies the model).
        model_name: Human name (e.g. ``student-pruned-int8``).
        device_id: :func:`device_id` of the machine that measured it.
        device_name: Human name of that machine (hostname, GPU).
        runtime: Runtime name of :mod:`edgedistill.runtime.registry`.
        precision: ``fp32``, ``fp16``, ``int8``, ...
        batch: Batch size of one call.
        threads: Intra-op threads the runtime was given.
        p50_ms, p90_ms, p99_ms, mean_ms: Latency of one call (one batch), in milliseconds.
        throughput_per_s: Samples (not batches) per second at the median latency.
        versions: Runtime/library versions that matter for the number.
        environment: The full environment record of the measurement.
        engine_build_s: Seconds to build an engine (TensorRT and the like), else None.
        memory_mb: Peak resident memory of the measuring process, in MiB, when known.
        run_id: The run folder's name or an agent job id.
        source: ``"local"`` or the URL of the agent that measured it.
        recorded_at: ISO-8601 UTC time; :meth:`ResultsStore.add` fills it when empty.
    """

    model_sha256: str
    model_name: str
    device_id: str
    device_name: str
    runtime: str
    precision: str
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    versions: dict[str, str] = field(hash=False)
    environment: dict[str, Any] = field(hash=False)
    engine_build_s: float | None = None
    memory_mb: float | None = None
    run_id: str = ""
    source: str = "local"
    recorded_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def group_key(self) -> tuple[Any, ...]:
        """What :meth:`ResultsStore.latest` keeps one row of."""
        return (
            self.model_sha256,
            self.device_id,
            self.runtime,
            self.precision,
            self.batch,
            self.threads,
            _canonical(self.versions),
        )


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def utc_now() -> str:
    """The current time as ISO-8601 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _gpu_names(environment: dict[str, Any]) -> list[str]:
    """GPU/board model names in an environment record: ``gpu`` as
    :func:`edgedistill.bench.device_env.gpu_environment` writes it (``{"gpus": [{"name"}]}``),
    ``jetson`` (``{"model"}``), or plain strings and lists of them."""
    names: list[str] = []

    def visit(value: Any, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(value, str) and value:
            names.append(value)
        elif isinstance(value, list):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict):
            named = next((value[k] for k in ("name", "model") if isinstance(value.get(k), str)), "")
            if named:
                names.append(named)
            for key in ("gpus", "devices"):
                visit(value.get(key), depth + 1)

    for key in ("gpu", "gpus", "jetson"):
        visit(environment.get(key), 0)
    return names


def device_id(environment: dict[str, Any]) -> str:
    """A stable short id of a machine: hostname, CPU model and GPU model(s), hashed.

    The same machine gives the same id across runs and library upgrades (versions are not part
    of it); two machines with the same hostname but different hardware differ.

    Args:
        environment: A record of :func:`edgedistill.bench.env.environment`, optionally with
            ``gpu``/``jetson`` entries of the device environment helpers.

    Returns:
        12 hex characters.
    """
    parts = [
        str(environment.get("machine", "")),
        str(environment.get("cpu", "")),
        *sorted(_gpu_names(environment)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def device_name(environment: dict[str, Any]) -> str:
    """A readable name: hostname, plus the first GPU's model when there is one."""
    host = str(environment.get("machine") or "unknown")
    gpus = _gpu_names(environment)
    return f"{host} ({gpus[0]})" if gpus else host


class ResultsStore:
    """Append-only measurements in one SQLite file.

    Args:
        path: The database file; created (with its folder and schema) when absent.

    Raises:
        DataError: ``path`` exists but is not an SQLite database of this schema.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # A store this process may not write (a finished run folder made read-only) is opened
        # read-only and immutable: SQLite cannot even read a WAL database without writing its
        # -shm file, and nothing else may be writing it either.
        self.read_only = self.path.is_file() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK | os.X_OK)
        )
        if self.read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                if row[0] is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                elif row[0] > SCHEMA_VERSION:
                    raise DataError(
                        f"results store {self.path} has schema {row[0]}, newer than this "
                        f"edgedistill's {SCHEMA_VERSION}: upgrade edgedistill"
                    )
                conn.commit()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> DataError:
        if isinstance(exc, sqlite3.IntegrityError):  # a row the schema refuses (e.g. None)
            return DataError(f"results store {self.path}: row refused ({exc})")
        return DataError(
            f"results store {self.path} is not a usable SQLite database ({exc}): "
            "move it away or choose another store path"
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.read_only:
                uri = f"{self.path.resolve().as_uri()}?immutable=1"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        with closing(conn):
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn

    def add(self, rows: Iterable[Measurement]) -> int:
        """Append ``rows`` in one transaction (all or none).

        Returns:
            The number of rows added.
        """
        now = utc_now()
        values = []
        for row in rows:
            if not row.recorded_at:
                row = dataclasses.replace(row, recorded_at=now)
            record = row.to_dict()
            record["versions"] = _canonical(row.versions)
            record["environment"] = _canonical(row.environment)
            values.append(tuple(record[c] for c in _COLUMNS))
        if not values:
            return 0
        if self.read_only:
            raise DataError(f"results store {self.path} is read-only: make it writable")
        sql = (
            f"INSERT INTO measurements ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
        )
        with self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, values)
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._error(exc) from None
        return len(values)

    def query(
        self,
        *,
        device_id: str | None = None,
        model_sha256: str | None = None,
        run_id: str | None = None,
    ) -> list[Measurement]:
        """Rows matching every given filter, oldest first (insertion order)."""
        where, args = [], []
        for column, value in (
            ("device_id", device_id),
            ("model_sha256", model_sha256),
            ("run_id", run_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        with self._connect() as conn:
            try:
                fetched = conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None
        return [_row_to_measurement(r) for r in fetched]

    def latest(
        self,
        *,
        device_id: str | None = None,
        model_sha256: str | None = None,
        run_id: str | None = None,
    ) -> list[Measurement]:
        """The newest row per (model_sha256, device_id, runtime, precision, batch, threads,
        versions) among the rows :meth:`query` returns for the same filters.

        Newest means the latest ``recorded_at``; rows recorded at the same instant are ordered
        by insertion. The result keeps the order in which the groups first appeared.
        """
        rows = self.query(device_id=device_id, model_sha256=model_sha256, run_id=run_id)
        newest: dict[tuple[Any, ...], tuple[str, int, Measurement]] = {}
        for index, row in enumerate(rows):
            key = row.group_key()
            held = newest.get(key)
            if held is None or (row.recorded_at, index) >= held[:2]:
                newest[key] = (row.recorded_at, index, row)
        return [entry[2] for entry in newest.values()]

    def devices(self) -> list[tuple[str, str]]:
        """Every (device_id, device_name) with at least one row, sorted by name then id."""
        with self._connect() as conn:
            try:
                fetched = conn.execute(
                    "SELECT DISTINCT device_id, device_name FROM measurements "
                    "ORDER BY device_name, device_id"
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None
        return [(str(a), str(b)) for a, b in fetched]

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])


def _row_to_measurement(row: tuple[Any, ...]) -> Measurement:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["versions"] = json.loads(data["versions"])
    data["environment"] = json.loads(data["environment"])
    return Measurement(**data)
