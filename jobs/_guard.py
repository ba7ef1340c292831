"""Defence in depth: the pipeline computes only what Spark's analyzed plan shows to be allow-listed.

Definitions are checked at registration (`server.core.expression_problem`). A
definition stored before that check existed, or written to the database
directly, must not run either, and Spark could read a text differently from
the registration's parser. So before a feature is computed, every expression
in Spark's analyzed plan of its computation must be of a class on this list:
what the allowed functions and operators (`server.core.EXAMPLES`) and the
pipeline's own aggregations analyze to. tests/test_guard.py keeps the list
complete and proves hostile definitions fail here.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame

# Catalyst expression classes (simple names) a computation's analyzed plan may contain.
ALLOWED_EXPRESSIONS = frozenset(
    {
        "Abs",
        "Add",
        "AddMonths",
        "AggregateExpression",
        "Alias",
        "And",
        "ArrayContains",
        "ArrayDistinct",
        "ArrayJoin",
        "ArrayMax",
        "ArrayMin",
        "Ascii",
        "Atan2",
        "AttributeReference",
        "Average",
        "BRound",
        "Between",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CaseWhen",
        "Cast",
        "Cbrt",
        "Ceil",
        "Chr",
        "Coalesce",
        "CommonExpressionDef",
        "CommonExpressionRef",
        "Concat",
        "ConcatWs",
        "Contains",
        "Cos",
        "Count",
        "Crc32",
        "CreateArray",
        "CreateMap",
        "CreateNamedStruct",
        "CurrentDate",
        "CurrentTimestamp",
        "DateAdd",
        "DateDiff",
        "DateFormatClass",
        "DateSub",
        "DatetimeSub",
        "DayOfMonth",
        "DayOfWeek",
        "DayOfYear",
        "Divide",
        "ElementAt",
        "EndsWith",
        "EqualNullSafe",
        "EqualTo",
        "EulerNumber",
        "Exp",
        "Extract",
        "Floor",
        "FromUnixTime",
        "GetArrayItem",
        "GetMapValue",
        "GetStructField",
        "GreaterThan",
        "GreaterThanOrEqual",
        "Greatest",
        "Hour",
        "ILike",
        "If",
        "In",
        "InitCap",
        "IntegralDivide",
        "IsNaN",
        "IsNotNull",
        "IsNull",
        "LastDay",
        "Least",
        "Left",
        "Length",
        "LessThan",
        "LessThanOrEqual",
        "Like",
        "Literal",
        "LocalTimestamp",
        "Log",
        "Log10",
        "Log1p",
        "Log2",
        "Logarithm",
        "Lower",
        "MakeDate",
        "Max",
        "MaxBy",
        "Md5",
        "MicrosToTimestamp",
        "MillisToTimestamp",
        "Min",
        "MinBy",
        "Minute",
        "Month",
        "MonthsBetween",
        "Multiply",
        "Murmur3Hash",
        "NaNvl",
        "NextDay",
        "Not",
        "Now",
        "NullIf",
        "NullIfResult",
        "NullIfZero",
        "Nvl",
        "Nvl2",
        "OctetLength",
        "Or",
        "ParseToDate",
        "ParseToTimestamp",
        "Pi",
        "Pmod",
        "Pow",
        "Quarter",
        "RLike",
        "RegExpExtract",
        "RegExpReplace",
        "Remainder",
        "Reverse",
        "Right",
        "Round",
        "Second",
        "SecondsToTimestamp",
        "Sha1",
        "Sha2",
        "Signum",
        "Sin",
        "Size",
        "SortArray",
        "SplitPart",
        "Sqrt",
        "StartsWith",
        "StddevSamp",
        "StringInstr",
        "StringLPad",
        "StringLocate",
        "StringRPad",
        "StringRepeat",
        "StringReplace",
        "StringTranslate",
        "StringTrim",
        "StringTrimBoth",
        "StringTrimLeft",
        "StringTrimRight",
        "Substring",
        "Subtract",
        "Sum",
        "Tan",
        "TimestampAddInterval",
        "ToDegrees",
        "ToRadians",
        "TruncDate",
        "TruncTimestamp",
        "TryAdd",
        "TryDivide",
        "TryMultiply",
        "TrySubtract",
        "UnaryMinus",
        "UnaryPositive",
        "UnixDate",
        "UnixMicros",
        "UnixMillis",
        "UnixSeconds",
        "UnixTimestamp",
        "Upper",
        "WeekDay",
        "WeekOfYear",
        "WidthBucket",
        "With",
        "XxHash64",
        "Year",
        "ZeroIfNull",
    }
)


def _children(node: Any) -> list[Any]:
    seq = node.children()
    return [seq.apply(i) for i in range(seq.size())]


def analyzed_expressions(df: DataFrame) -> set[str]:
    """The simple class names of every expression in `df`'s analyzed logical plan."""
    names: set[str] = set()
    plans = [df._jdf.queryExecution().analyzed()]
    while plans:
        plan = plans.pop()
        seq = plan.expressions()
        expressions = [seq.apply(i) for i in range(seq.size())]
        while expressions:
            expression = expressions.pop()
            names.add(expression.getClass().getSimpleName())
            expressions += _children(expression)
        plans += _children(plan)
    return names


def disallowed_expressions(df: DataFrame) -> list[str]:
    """The expression classes in `df`'s analyzed plan that are not allow-listed (empty: it may run)."""
    return sorted(analyzed_expressions(df) - ALLOWED_EXPRESSIONS)
