"""The device agent: profile models on the machine they will run on.

``store`` (stdlib SQLite results store), ``unpack`` (safe upload handling), ``jobs`` (one worker
thread), ``server`` (FastAPI; extra ``[agent]``) and ``client`` (stdlib HTTP). Only the store is
re-exported here, so importing this package never needs FastAPI.
"""

from edgedistill.agent.store import Measurement, ResultsStore, device_id

__all__ = ["Measurement", "ResultsStore", "device_id"]
