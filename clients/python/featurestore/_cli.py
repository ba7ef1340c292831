"""`featurestore`: the command line of the feature store (kubectl / gh conventions).

Human tables by default, `--output json` for scripts; errors go to stderr with the
server's message, and the exit code says what happened:

| code | meaning |
|---|---|
| 0 | success (for `plan`: also "changes pending" unless `--detailed-exitcode`) |
| 1 | an error: the server refused the call, a definitions file is invalid, apply conflicted |
| 2 | bad usage (unknown command or option) |
| 3 | `plan --detailed-exitcode`: the registry differs from the definitions |
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from featurestore._common import DEFAULT_TARGET, FeatureVector
from featurestore._definitions import DefinitionError, apply_plan, load_definitions, plan_definitions
from featurestore._errors import FeatureStoreError
from featurestore._sync import Client
from featurestore._values import FeatureResult

EXIT_ERROR, EXIT_USAGE, EXIT_CHANGES = 1, 2, 3


def _jsonable(x: Any) -> Any:
    if isinstance(x, datetime):
        return x.isoformat().replace("+00:00", "Z")
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, Message):
        return json_format.MessageToDict(x, preserving_proto_field_name=True)
    return x


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    cells = [[str(h).upper() for h in header]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        out.write("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _result_rows(results: Iterable[FeatureResult]) -> list[list[Any]]:
    return [[r.name, _show(r.value), r.status, _jsonable(r.event_time)] for r in results]


def _show(value: Any) -> Any:
    value = _jsonable(value)
    return json.dumps(value) if isinstance(value, list) else value


def _cell(item: dict[str, Any], column: str) -> Any:
    value = item.get(column, "")
    return ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else _show(value)


class _Out:
    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt, self.out = fmt, out

    def json(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, default=_jsonable) + "\n")

    def definitions(self, messages: Iterable[Message], columns: Sequence[str]) -> None:
        items = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
        if self.fmt == "json":
            self.json(items)
            return
        rows = [
            [_show(item.get(c, "")) if c != "tags" else ",".join(item.get(c, [])) for c in columns] for item in items
        ]
        _table(rows, columns, self.out)

    def one(self, message: Message) -> None:
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
        if self.fmt == "json":
            self.json(data)
            return
        for key, value in data.items():
            self.out.write(f"{key + ':':<17} {json.dumps(value) if isinstance(value, list | dict) else value}\n")


def _client(args: argparse.Namespace) -> Client:
    roots = Path(args.ca_file).read_bytes() if args.ca_file else None
    return Client(args.target, token=args.token or None, tls=args.tls, root_certificates=roots, timeout=args.timeout)


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _cmd_features(args: argparse.Namespace, out: _Out) -> int:
    with _client(args) as client:
        if args.action == "list":
            found = client.list_features(
                entity_type=args.entity_type or "",
                owner=args.owner or "",
                tag=args.tag or "",
                category=args.category or "",
            )
            out.definitions(found, ["name", "entity_type", "value_type", "source", "owner", "revision", "tags"])
        elif args.action == "get":
            out.one(client.get_feature(args.name))
        else:
            revisions = client.list_feature_revisions(args.name)
            out.definitions(revisions, ["revision", "update_time", "revised_by", "description", "owner", "etag"])
    return 0


def _cmd_groups(args: argparse.Namespace, out: _Out) -> int:
    with _client(args) as client:
        if args.action == "list":
            found = client.list_feature_groups(
                entity_type=args.entity_type or "", owner=args.owner or "", tag=args.tag or ""
            )
            out.definitions(found, ["name", "entity_type", "feature_names", "owner", "revision", "tags"])
        else:
            out.one(client.get_feature_group(args.name))
    return 0


def _cmd_get(args: argparse.Namespace, out: _Out) -> int:
    with _client(args) as client:
        ids = _names(args.entity)
        vectors: list[FeatureVector] = client.batch_get_features(
            args.entity_type, ids, _names(args.features), groups=_names(args.groups)
        )
    if out.fmt == "json":
        out.json(
            [
                {
                    "entity_id": v.entity_id,
                    "features": [
                        {"name": r.name, "value": r.value, "status": r.status, "event_time": r.event_time}
                        for r in v.results.values()
                    ],
                }
                for v in vectors
            ]
        )
    else:
        rows = [[v.entity_id, *row] for v in vectors for row in _result_rows(v.results.values())]
        _table(rows, ["entity", "feature", "value", "status", "event_time"], out.out)
    return 0


def _cmd_history(args: argparse.Namespace, out: _Out) -> int:
    with _client(args) as client:
        values = list(
            client.iter_history(args.entity_type, args.entity, _names(args.features), start=args.start, end=args.end)
        )
    if out.fmt == "json":
        out.json([{"name": r.name, "value": r.value, "status": r.status, "event_time": r.event_time} for r in values])
    else:
        _table(
            [[r.event_time and _jsonable(r.event_time), r.name, _show(r.value)] for r in values],
            ["event_time", "feature", "value"],
            out.out,
        )
    return 0


def _progress(stream: TextIO) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if total > 0:
            filled = done * 30 // total
            stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} rows")
        else:
            stream.write(f"\r{done} rows")
        stream.flush()

    return show


def _read_rows(path: Path) -> Any:
    try:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
    except ImportError:
        raise DefinitionError("training-dataset needs pyarrow: pip install 'featurestore-client[parquet]'") from None
    if path.suffix == ".csv":
        return pcsv.read_csv(path)
    return pq.read_table(path)


def _cmd_training(args: argparse.Namespace, out: _Out) -> int:
    rows = _read_rows(Path(args.rows))
    max_age = timedelta(seconds=args.max_age) if args.max_age else None
    with _client(args) as client:
        count = client.training_dataset_to_parquet(
            args.entity_type,
            rows,
            args.out,
            _names(args.features),
            groups=_names(args.groups),
            max_age=max_age,
            entity_column=args.entity_column,
            timestamp_column=args.timestamp_column,
            progress=None if args.quiet else _progress(sys.stderr),
        )
    if not args.quiet:
        sys.stderr.write("\n")
    if out.fmt == "json":
        out.json({"rows": count, "path": str(args.out)})
    else:
        out.out.write(f"wrote {count} rows to {args.out}\n")
    return 0


def _cmd_plan(args: argparse.Namespace, out: _Out) -> int:
    definitions = load_definitions(*args.file)
    with _client(args) as client:
        plan = plan_definitions(client, definitions, prune=args.prune)
        if args.command == "apply" and plan.changes:
            if out.fmt != "json":
                out.out.write(plan.render() + "\n")
            apply_plan(client, plan)
            if out.fmt == "json":
                out.json({"applied": plan.to_dict()})
            else:
                n = plan.counts()
                out.out.write(f"Applied: {n['create']} created, {n['update']} changed, {n['delete']} deleted.\n")
            return 0
    if out.fmt == "json":
        out.json(plan.to_dict())
    else:
        out.out.write(plan.render() + "\n")
    if args.command == "plan" and args.detailed_exitcode and plan.changes:
        return EXIT_CHANGES
    return 0


def _iso_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The connection and output options, accepted before and after the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        default=default(os.environ.get("FEATURESTORE_TARGET", DEFAULT_TARGET)),
        help=f"server host:port (env FEATURESTORE_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("FEATURESTORE_TOKEN", "")),
        help="bearer token (env FEATURESTORE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS (the system's roots)")
    group.add_argument("--ca-file", default=default(""), help="PEM roots to trust (implies TLS)")
    group.add_argument("--timeout", type=float, default=default(30.0), help="seconds per call (default 30)")
    group.add_argument(
        "-o", "--output", choices=["table", "json"], default=default("table"), help="table (default) or json"
    )


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    main = argparse.ArgumentParser(
        prog="featurestore",
        description="Read features and manage definitions of the feature store.",
        epilog="Exit codes: 0 success, 1 error, 2 bad usage, 3 plan --detailed-exitcode found changes.",
    )
    _common(main, suppress=False)
    sub = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = argparse.ArgumentParser(add_help=False)
    _common(shared, suppress=True)

    features = sub.add_parser("features", help="list, get and show revisions of features", parents=[shared])
    fsub = features.add_subparsers(dest="action", required=True, metavar="ACTION")
    flist = fsub.add_parser("list", help="list features", parents=[shared])
    for name in ("entity-type", "owner", "tag", "category"):
        flist.add_argument(f"--{name}")
    fsub.add_parser("get", help="show a feature", parents=[shared]).add_argument("name")
    fsub.add_parser("revisions", help="a feature's definitions, newest first", parents=[shared]).add_argument("name")
    features.set_defaults(run=_cmd_features)

    groups = sub.add_parser("groups", help="list and get feature groups", parents=[shared])
    gsub = groups.add_subparsers(dest="action", required=True, metavar="ACTION")
    glist = gsub.add_parser("list", help="list feature groups", parents=[shared])
    for name in ("entity-type", "owner", "tag"):
        glist.add_argument(f"--{name}")
    gsub.add_parser("get", help="show a feature group", parents=[shared]).add_argument("name")
    groups.set_defaults(run=_cmd_groups)

    get = sub.add_parser("get", help="latest values of entities' features", parents=[shared])
    get.add_argument("--entity-type", required=True)
    get.add_argument("--entity", required=True, help="entity id(s), comma-separated")
    get.add_argument("--features", help="feature names, comma-separated")
    get.add_argument("--groups", help="feature group names, comma-separated")
    get.set_defaults(run=_cmd_get)

    history = sub.add_parser("history", help="an entity's feature values over time", parents=[shared])
    history.add_argument("--entity-type", required=True)
    history.add_argument("--entity", required=True)
    history.add_argument("--features", required=True, help="feature names, comma-separated")
    history.add_argument("--start", type=_iso_time, help="ISO 8601 time, inclusive (e.g. 2023-01-01T00:00:00Z)")
    history.add_argument("--end", type=_iso_time, help="ISO 8601 time, exclusive")
    history.set_defaults(run=_cmd_history)

    training = sub.add_parser(
        "training-dataset", help="point-in-time training data to a Parquet file", parents=[shared]
    )
    training.add_argument("--entity-type", required=True)
    training.add_argument("--rows", required=True, help="Parquet or CSV file of entity rows (id, timestamp, labels)")
    training.add_argument("--features", help="feature names, comma-separated")
    training.add_argument("--groups", help="feature group names, comma-separated")
    training.add_argument("--out", required=True, help="the Parquet file to write")
    training.add_argument("--max-age", type=float, help="seconds: older values count as NOT_FOUND")
    training.add_argument("--entity-column", default="entity_id")
    training.add_argument("--timestamp-column", default="timestamp")
    training.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    training.set_defaults(run=_cmd_training)

    for name, text in (
        ("plan", "show what apply would change (create / field diff / delete)"),
        ("apply", "make the registry match the definitions files"),
    ):
        cmd = sub.add_parser(name, help=text, parents=[shared])
        cmd.add_argument("-f", "--file", action="append", required=True, help="definitions file or directory")
        cmd.add_argument("--prune", action="store_true", help="delete what the files do not define (never by default)")
        if name == "plan":
            cmd.add_argument(
                "--detailed-exitcode", action="store_true", help="exit 3 when there are changes (0 when none)"
            )
        cmd.set_defaults(run=_cmd_plan)
    return main


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    stdout = out or sys.stdout
    try:
        code: int = args.run(args, _Out(args.output, stdout))
        return code
    except FeatureStoreError as err:
        sys.stderr.write(f"error: {err}\n")
        for path, problem in err.field_violations.items():
            if f"{path}: {problem}" not in err.message:  # the message names the first few
                sys.stderr.write(f"  {path}: {problem}\n")
        return EXIT_ERROR
    except (DefinitionError, OSError, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_ERROR


def console() -> None:
    """The `featurestore` console script."""
    raise SystemExit(main())
