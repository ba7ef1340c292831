"""The offline store: every written feature value, in PostgreSQL, for history and training."""

from server.offline._freshness import Freshness, load_freshness, record_freshness
from server.offline._model import HistoryQuery
from server.offline._pgstore import PostgresHistoryStore
from server.offline._servicer import HistoryServicer
from server.offline._servicer import methods as history_methods
from server.offline._training import TrainingServicer
from server.offline._training import methods as training_methods

__all__ = [
    "Freshness",
    "HistoryQuery",
    "HistoryServicer",
    "PostgresHistoryStore",
    "TrainingServicer",
    "history_methods",
    "load_freshness",
    "record_freshness",
    "training_methods",
]
