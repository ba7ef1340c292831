"""Spark SQL expressions in definitions are data: parsed and allow-listed, never run as given.

A definition's `source_config.filter`, its aggregation's `column` and its
`expression` steps are Spark SQL expressions that the pipelines compile. They
are checked here, without a JVM, with a real parser of Spark's dialect
(sqlglot): an expression may only be made of column references, literals,
operators, CASE, CAST and the deterministic scalar functions listed in
`FUNCTIONS`. Everything else (subqueries, table references, lambdas, window
and aggregate functions, `reflect`/`java_method`, `raise_error`, UDFs, any
function not on the list) is refused with the name of what was found.

The allow-list is written as Spark function names with an example call each;
the parser's node types allowed are the ones those examples parse to, so the
list and what is accepted cannot drift apart. The pipelines check again on
Spark's own analyzed plan before computing anything (defence in depth).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from server.core._functions import (
    EXAMPLES,
    EXPRESSION_MAX_CHARS,
    FUNCTIONS,
    NESTING_MAX,
    NODES_MAX,
    ExpressionUse,
)


@functools.cache
def _allowed() -> tuple[frozenset[type[exp.Expr]], frozenset[str]]:
    """(node types, names of calls the parser does not know) that the examples parse to."""
    types: set[type[exp.Expr]] = set()
    unknown_calls: set[str] = set()
    for example in EXAMPLES:
        for node in sqlglot.parse_one(example, read="spark").walk():
            if isinstance(node, exp.Anonymous):
                unknown_calls.add(node.name.lower())
            else:
                types.add(type(node))
    return frozenset(types), frozenset(unknown_calls)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


def _where(err: Exception) -> str:
    """Where parsing stopped, without the parser's internals."""
    errors = getattr(err, "errors", None) or [{}]
    line, col = errors[0].get("line"), errors[0].get("col")
    return f" (parsing stopped at line {line}, column {col})" if line and col else ""


def _describe(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return f"function {node.name}"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}"
    names = {
        exp.Select: "a subquery",
        exp.Subquery: "a subquery",
        exp.Table: "a table reference",
        exp.Lambda: "a lambda function",
        exp.Window: "a window function",
        exp.Star: "*",
        exp.Placeholder: "a parameter",
        exp.Parameter: "a parameter",
    }
    for kind, name in names.items():
        if isinstance(node, kind):
            return name
    return type(node).__name__


# Keywords that may stand before a parenthesis without being a call.
_OPERATOR_KEYWORDS = frozenset(
    {"in", "not", "and", "or", "when", "then", "else", "between", "like", "ilike", "rlike", "is", "interval", "case"}
)
_SPARK = Dialect.get_or_raise("spark")


def _calls(tokens: list[Token]) -> Iterator[str]:
    """The names of the functions called, as written (a word, quoted or not, before a parenthesis)."""
    for token, after in itertools.pairwise(tokens):
        if after.token_type is TokenType.L_PAREN and token.token_type is not TokenType.R_PAREN:
            name = token.text.lower()
            if name.replace("_", "").isalnum() and name not in _OPERATOR_KEYWORDS:
                yield name


def _problems(tree: exp.Expr, use: ExpressionUse) -> Iterator[str]:
    types, unknown_calls = _allowed()
    for node in tree.walk():
        if isinstance(node, exp.Anonymous) and node.name.lower() in unknown_calls:
            continue
        if isinstance(node, exp.Anonymous) or type(node) not in types:
            yield f"uses {_describe(node)}, which is not allowed in a definition (see docs/definitions.md)"
        elif isinstance(node, exp.Column) and use.columns is not None and (node.table or node.name not in use.columns):
            yield f"may refer only to {', '.join(sorted(use.columns))}, not {node.sql(dialect='spark')}"


def problem(text: str, use: ExpressionUse) -> str | None:
    """Why `text` is not an allowed Spark SQL expression for `use`, or None when it is."""
    if len(text) > EXPRESSION_MAX_CHARS:
        return f"must be at most {EXPRESSION_MAX_CHARS} characters, got {len(text)}"
    if _nesting(text) > NESTING_MAX:
        return f"is nested more than {NESTING_MAX} levels deep"
    try:
        tokens = _SPARK.tokenize(text)
        trees = sqlglot.parse(text, read="spark")
    except (SqlglotError, RecursionError) as err:
        return f"is not a Spark SQL expression{_where(err)}"
    unknown = next((name for name in _calls(tokens) if name not in FUNCTIONS), None)
    if unknown:
        return f"uses function {unknown}, which is not allowed in a definition (see docs/definitions.md)"
    if len(trees) != 1 or trees[0] is None:
        return "must be one expression (no ';')"
    tree = trees[0]
    if sum(1 for _ in tree.walk()) > NODES_MAX:
        return f"is too large: more than {NODES_MAX} terms"
    return next(_problems(tree, use), None)
