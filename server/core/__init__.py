"""What the server's packages and the pipelines share; imports nothing else of the server."""

from server.core._definitions import (
    AGGREGATION,
    AGGREGATIONS,
    EXPRESSION,
    FILTER,
    TRANSFORMATION_TYPES,
    TRANSFORMATIONS_MAX,
    Step,
    computation_problems,
)
from server.core._expressions import EXAMPLE_COLUMNS, EXAMPLES, FUNCTIONS, ExpressionUse, expression_problem

__all__ = [
    "AGGREGATION",
    "AGGREGATIONS",
    "EXAMPLES",
    "EXAMPLE_COLUMNS",
    "EXPRESSION",
    "FILTER",
    "FUNCTIONS",
    "TRANSFORMATIONS_MAX",
    "TRANSFORMATION_TYPES",
    "ExpressionUse",
    "Step",
    "computation_problems",
    "expression_problem",
]
