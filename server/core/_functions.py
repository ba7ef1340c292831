"""The allowed vocabulary of definitions' Spark SQL expressions, without the parser.

Definitions are data: their expressions may only use column references,
literals, operators, CASE, CAST and the deterministic scalar functions listed in
`FUNCTIONS` (each with an example call). `expression_problem` checks a text
with a real parser of Spark's dialect (sqlglot, in `_expressions`), loaded on
first use (see `server.core.expression_problem`) so that importing the core, as
the pipelines' executors do, does not load the parser.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPRESSION_MAX_CHARS = 4096
NESTING_MAX = 32  # parentheses deep
NODES_MAX = 512  # parsed nodes in one expression

# Each allowed Spark function with one example call. Only deterministic scalar functions:
# the clock functions are pinned to the run's as-of time by the pipelines.
FUNCTIONS: dict[str, str] = {
    # math
    "abs": "abs(x)", "ceil": "ceil(x)", "ceiling": "ceiling(x)", "floor": "floor(x)", "round": "round(x, 2)",
    "bround": "bround(x, 2)", "sqrt": "sqrt(x)", "cbrt": "cbrt(x)", "exp": "exp(x)", "ln": "ln(x)",
    "log": "log(10, x)", "log10": "log10(x)", "log2": "log2(x)", "log1p": "log1p(x)", "pow": "pow(x, 2)",
    "power": "power(x, 2)", "sign": "sign(x)", "signum": "signum(x)", "greatest": "greatest(x, y)",
    "least": "least(x, y)", "mod": "mod(x, 2)", "pmod": "pmod(x, 2)", "negative": "negative(x)",
    "positive": "positive(x)", "isnan": "isnan(x)", "nanvl": "nanvl(x, y)", "width_bucket": "width_bucket(x, 0, 9, 3)",
    "pi": "pi()", "e": "e()", "degrees": "degrees(x)", "radians": "radians(x)", "sin": "sin(x)", "cos": "cos(x)",
    "tan": "tan(x)", "atan2": "atan2(x, y)", "try_add": "try_add(x, y)", "try_subtract": "try_subtract(x, y)",
    "try_multiply": "try_multiply(x, y)", "try_divide": "try_divide(x, y)",
    # nulls and conditions
    "coalesce": "coalesce(x, 0)", "nvl": "nvl(x, 0)", "nvl2": "nvl2(x, 1, 0)", "ifnull": "ifnull(x, 0)",
    "nullif": "nullif(x, 0)", "if": "if(x > 0, 1, 0)", "isnull": "isnull(x)", "isnotnull": "isnotnull(x)",
    "zeroifnull": "zeroifnull(x)", "nullifzero": "nullifzero(x)",
    # strings
    "lower": "lower(s)", "upper": "upper(s)", "lcase": "lcase(s)", "ucase": "ucase(s)", "length": "length(s)",
    "char_length": "char_length(s)", "character_length": "character_length(s)", "octet_length": "octet_length(s)",
    "trim": "trim(s)", "ltrim": "ltrim(s)", "rtrim": "rtrim(s)", "btrim": "btrim(s)",
    "substring": "substring(s, 1, 2)", "substr": "substr(s, 1, 2)", "concat": "concat(s, t)",
    "concat_ws": "concat_ws('-', s, t)", "replace": "replace(s, 'a', 'b')", "lpad": "lpad(s, 3, '0')",
    "rpad": "rpad(s, 3, '0')", "left": "left(s, 2)", "right": "right(s, 2)", "instr": "instr(s, 'a')",
    "locate": "locate('a', s)", "split_part": "split_part(s, ',', 1)",
    "regexp_extract": "regexp_extract(s, 'a(b)', 1)", "regexp_replace": "regexp_replace(s, 'a', 'b')",
    "regexp_like": "regexp_like(s, 'a')", "initcap": "initcap(s)", "reverse": "reverse(s)",
    "startswith": "startswith(s, 'a')", "endswith": "endswith(s, 'a')", "contains": "contains(s, 'a')",
    "repeat": "repeat(s, 2)", "translate": "translate(s, 'a', 'b')", "ascii": "ascii(s)", "chr": "chr(65)",
    "char": "char(65)", "md5": "md5(s)", "sha1": "sha1(s)", "sha2": "sha2(s, 256)", "crc32": "crc32(s)",
    "hash": "hash(s)", "xxhash64": "xxhash64(s)",
    # dates and times
    "date_add": "date_add(d, 1)", "date_sub": "date_sub(d, 1)", "dateadd": "dateadd(d, 1)",
    "datediff": "datediff(d, e)", "date_diff": "date_diff(d, e)", "add_months": "add_months(d, 1)",
    "months_between": "months_between(d, e)", "date_trunc": "date_trunc('day', d)", "trunc": "trunc(d, 'month')",
    "to_date": "to_date(s, 'yyyy-MM-dd')", "to_timestamp": "to_timestamp(s, 'yyyy-MM-dd')", "year": "year(d)",
    "month": "month(d)", "day": "day(d)", "dayofmonth": "dayofmonth(d)", "dayofweek": "dayofweek(d)",
    "dayofyear": "dayofyear(d)", "weekday": "weekday(d)", "hour": "hour(d)", "minute": "minute(d)",
    "second": "second(d)", "weekofyear": "weekofyear(d)", "quarter": "quarter(d)", "last_day": "last_day(d)",
    "next_day": "next_day(d, 'Mon')", "unix_timestamp": "unix_timestamp(d)", "unix_date": "unix_date(dt)",
    "unix_micros": "unix_micros(d)", "unix_millis": "unix_millis(d)", "unix_seconds": "unix_seconds(d)",
    "timestamp_seconds": "timestamp_seconds(i)", "timestamp_millis": "timestamp_millis(i)",
    "timestamp_micros": "timestamp_micros(i)", "date_format": "date_format(d, 'yyyy')",
    "from_unixtime": "from_unixtime(x)", "make_date": "make_date(2020, 1, 1)", "extract": "extract(year FROM d)",
    "date_part": "date_part('year', d)", "now": "now()", "current_timestamp": "current_timestamp()",
    "current_date": "current_date()", "localtimestamp": "localtimestamp()", "curdate": "curdate()",
    # arrays
    "array": "array(1, 2)", "array_contains": "array_contains(a, 1)", "size": "size(a)",
    "cardinality": "cardinality(a)", "element_at": "element_at(a, 1)", "array_max": "array_max(a)",
    "array_min": "array_min(a)", "array_distinct": "array_distinct(a)", "array_join": "array_join(a, ',')",
    "sort_array": "sort_array(a)",
    # casts (CAST(x AS t) and the type-named shorthands)
    "cast": "cast(x AS double)", "try_cast": "try_cast(x AS int)", "string": "string(x)", "double": "double(x)",
    "int": "int(x)", "bigint": "bigint(x)", "float": "float(x)", "boolean": "boolean(x)", "date": "date(s)",
    "timestamp": "timestamp(x)",
}  # fmt: skip

# Operators, CASE, literals and references: what an expression is made of besides calls.
# (The examples are well-typed over EXAMPLE_COLUMNS, so Spark can analyze them too.)
_SYNTAX = (
    "(x + 1) * 2 / 3 - 4 % 5",
    "i div 2",
    "-x",
    "~i",
    "i & j | i ^ j",
    "s || t",
    "x = 1 AND x <> 2 AND x != 3 AND x < 4 AND x <= 5 AND x > 6 AND x >= 7 AND x <=> 8",
    "NOT (b OR c)",
    "x BETWEEN 1 AND 2",
    "x IN (1, 2)",
    "s LIKE 'a%' OR s ILIKE 'a%' OR s RLIKE 'a'",
    "x IS NULL OR x IS NOT NULL",
    "CASE WHEN x > 1 THEN 'a' ELSE 'b' END",
    "CASE x WHEN 1 THEN 'a' END",
    "d >= now() - INTERVAL '30 days' AND d < now() - INTERVAL 1 DAY",
    "x::int",
    "TIMESTAMP'2024-01-01 00:00:00' < DATE'2024-01-01'",
    "X'00'",
    "1.5BD + 10L + 1e3",
    "true AND null",
    "r.f",
    "m['k'] + a[0]",
)


# The columns the examples use, as Spark SQL: x, y doubles; i, j bigints; s, t strings;
# d, e timestamps; dt a date; b, c booleans; a an array; r a struct; m a map.
EXAMPLE_COLUMNS = (
    "1.5D AS x, 2.5D AS y, 3L AS i, 4L AS j, 'ab' AS s, 'cd' AS t, TIMESTAMP'2024-01-01 00:00:00' AS d, "
    "TIMESTAMP'2024-01-02 00:00:00' AS e, DATE'2024-01-01' AS dt, true AS b, false AS c, array(1, 2) AS a, "
    "named_struct('f', 1) AS r, map('k', 1) AS m"
)
EXAMPLES = (*FUNCTIONS.values(), *_SYNTAX)


@dataclass(frozen=True, slots=True)
class ExpressionUse:
    """Where an expression is used: what it may refer to."""

    columns: frozenset[str] | None  # the only column names allowed; None = any column of the source

    @classmethod
    def over_source(cls) -> ExpressionUse:
        return cls(None)

    @classmethod
    def over(cls, *names: str) -> ExpressionUse:
        return cls(frozenset(names))
