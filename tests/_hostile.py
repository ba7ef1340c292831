"""A corpus of hostile definition expressions, shared by the registry and pipeline tests."""

from __future__ import annotations

_FULL_WIDTH_REFLECT = "\uff52\uff45\uff46\uff4c\uff45\uff43\uff54"  # "reflect" in full-width letters

# Expressions that reach the JVM, other data, or the clock and randomness, or that are not
# expressions at all: each must be refused, naming what it uses.
HOSTILE = {
    'reflect("java.lang.System", "getProperty", "user.dir")': "reflect",
    "java_method('java.lang.System', 'getenv', 'PGPASSWORD')": "java_method",
    "try_reflect('java.lang.System', 'exit', 0)": "try_reflect",
    "REFLECT('java.lang.Runtime', 'getRuntime')": "reflect",
    "`reflect`('java.lang.System', 'getProperty', 'user.home')": "reflect",
    "reflect ('java.lang.System', 'getProperty', 'user.home')": "reflect",
    "upper(java_method('java.lang.System', 'getenv', 'HOME'))": "java_method",
    "assert_true(purchase_amount > 0)": "assert_true",
    "raise_error('stop')": "raise_error",
    "(SELECT max(purchase_amount) FROM customer_purchases)": "max",
    "purchase_amount > (SELECT 1)": "subquery",
    "purchase_id IN (SELECT purchase_id FROM postgres.public.feature_history)": "subquery",
    "exists(SELECT 1)": "exists",
    "transform(array(1, 2), x -> x + 1)": "transform",
    "aggregate(array(1), 0, (acc, x) -> acc + x)": "aggregate",
    "rand() > 0.5": "rand",
    "uuid()": "uuid",
    "current_user()": "current_user",
    "input_file_name()": "input_file_name",
    "spark_partition_id()": "spark_partition_id",
    "my_udf(purchase_amount)": "my_udf",
    "sum(purchase_amount)": "sum",
    "max(purchase_amount) OVER (PARTITION BY customer_id)": "max",
    "aes_decrypt(payload, 'key')": "aes_decrypt",
    "from_json(payload, 'a INT')": "from_json",
    "purchase_amount; DROP TABLE feature_history": "one expression",
    "SELECT 1": "subquery",
    "*": "*",
    "purchase_amount + ?": "parameter",
    "(" * 40 + "1" + ")" * 40: "nested",
    "+".join(["a"] * 300): "too large",
    "x" * 5000: "at most 4096 characters",
    "purchase_amount >": "not a spark sql expression",
    _FULL_WIDTH_REFLECT + "('java.lang.System', 'getProperty', 'user.dir')": _FULL_WIDTH_REFLECT,
}
