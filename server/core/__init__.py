"""What the server's packages and the pipelines share; imports nothing else of the server.

Besides the names below: `server.core.codec` (the stored value form and response framing)
and `server.core.errors` (domain errors and their gRPC statuses).
"""

from server.core._caller import acting_as, caller_subject
from server.core._copy import HISTORY_COLUMNS, HistoryRows, copy_data, copy_tuples
from server.core._definitions import (
    AGGREGATION,
    AGGREGATIONS,
    EXPRESSION,
    FILTER,
    TRANSFORMATION_TYPES,
    TRANSFORMATIONS_MAX,
    Step,
    computation_problems,
    expression_problem,
)
from server.core._functions import EXAMPLE_COLUMNS, EXAMPLES, FUNCTIONS, ExpressionUse
from server.core._limits import Limits
from server.core._records import HistoryRecord, HistoryRow, KeyWrite, entity_key, entity_keys
from server.core._services import FEATURE_STORE_SERVICE, REGISTRY_SERVICE
from server.core._streaming import (
    DEFAULT_EVENT_TIME,
    EVENT_FIELD_TYPES,
    STREAM_AGGREGATIONS,
    TILE_SECONDS,
    WATERMARK_DEFAULT_SECONDS,
    WINDOW_MAX_SECONDS,
    EventField,
    StreamSource,
    StreamStep,
    batch_stream_problems,
    entity_field,
    streaming_problems,
    time_field,
)
from server.core._validation import (
    ENTITY_ID_MAX_BYTES,
    NAME_MAX,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    VALUE_KINDS,
    entity_id_problem,
    entity_ids_fine,
    entity_type_problem,
    identifier_problem,
    preview,
    table_problem,
    timestamp_problem,
)
from server.core._writes import WriteBatch

__all__ = [
    "AGGREGATION",
    "AGGREGATIONS",
    "DEFAULT_EVENT_TIME",
    "ENTITY_ID_MAX_BYTES",
    "EVENT_FIELD_TYPES",
    "EXAMPLES",
    "EXAMPLE_COLUMNS",
    "EXPRESSION",
    "FEATURE_STORE_SERVICE",
    "FILTER",
    "FUNCTIONS",
    "HISTORY_COLUMNS",
    "NAME_MAX",
    "REGISTRY_SERVICE",
    "STREAM_AGGREGATIONS",
    "TILE_SECONDS",
    "TIMESTAMP_MAX_SECONDS",
    "TIMESTAMP_MIN_SECONDS",
    "TRANSFORMATIONS_MAX",
    "TRANSFORMATION_TYPES",
    "VALUE_KINDS",
    "WATERMARK_DEFAULT_SECONDS",
    "WINDOW_MAX_SECONDS",
    "EventField",
    "ExpressionUse",
    "HistoryRecord",
    "HistoryRow",
    "HistoryRows",
    "KeyWrite",
    "Limits",
    "Step",
    "StreamSource",
    "StreamStep",
    "WriteBatch",
    "acting_as",
    "batch_stream_problems",
    "caller_subject",
    "computation_problems",
    "copy_data",
    "copy_tuples",
    "entity_field",
    "entity_id_problem",
    "entity_ids_fine",
    "entity_key",
    "entity_keys",
    "entity_type_problem",
    "expression_problem",
    "identifier_problem",
    "preview",
    "streaming_problems",
    "table_problem",
    "time_field",
    "timestamp_problem",
]
