"""The offline store: every written feature value, in PostgreSQL, for history and training."""

from server.offline._model import HistoryQuery, HistoryRow
from server.offline._pgstore import HistoryRecord, PostgresHistoryStore
from server.offline._servicer import HistoryServicer, handler
from server.offline._training import TrainingServicer
from server.offline._training import handler as training_handler

__all__ = [
    "HistoryQuery",
    "HistoryRecord",
    "HistoryRow",
    "HistoryServicer",
    "PostgresHistoryStore",
    "TrainingServicer",
    "handler",
    "training_handler",
]
