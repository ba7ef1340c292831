"""The REST API through the real Envoy, fed hypothesis-generated requests on every route.

Every route bound in the protos (read from the descriptor set Envoy transcodes with) gets
arbitrary bodies (JSON of any shape, wrong types, huge numbers, deep nesting, lone
surrogates, bytes that are not UTF-8, unknown and misspelt fields), path parameters and
query strings. Whatever comes in: no 5xx, every error is a JSON google.rpc.Status whose
code fits the HTTP status, and the registry is exactly as it was.

Mutations are made to fail on purpose, so that "unchanged" is exact: creates always name
the definition that exists already, and updates and deletes always carry a stale etag.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack import Proc, envoy_config
from tests._helpers import CLEAR_REGISTRY, run_sql
from tests._http import Response, Rest

DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "gateway" / "featurestore.pb"
FEATURE, GROUP = "fuzz_existing", "fuzz_existing_group"  # names no other test uses
ENTITY_TYPE = "fuzz_entity"
STALE_ETAG = "0000stale0000"

# google.rpc.Code -> the HTTP statuses it may come back as (the transcoder's mapping,
# plus what Envoy says itself: 408 timeouts, 413/431 sizes).
HTTP_OF_CODE = {
    1: {499},
    2: {500},
    3: {400},
    4: {504, 408},
    5: {404},
    6: {409},
    7: {403},
    8: {429, 413, 431},
    9: {400},
    10: {409},
    11: {400},
    12: {501, 404},
    13: {500},
    14: {503},
    15: {500},
    16: {401},
}


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, PATCH, DELETE
    template: str  # /api/feature-registry/features/{feature.name}
    body: str  # "", "*" or the request field the body is
    input_type: str  # .featurestore.registry.v1.UpdateFeatureRequest

    @property
    def registry(self) -> bool:
        return self.template.startswith("/api/feature-registry/")

    @property
    def mutation(self) -> bool:
        """Changes the registry if it succeeds."""
        return self.registry and self.method != "GET"

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    # annotations_pb2 is imported above: MethodOptions' google.api.http extension parses.
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


def rest_routes() -> list[Route]:
    """Every google.api.http binding of the featurestore services."""
    routes = []
    for file in _descriptors().file:
        if not file.package.startswith("featurestore."):
            continue
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb is None:
                    continue  # gRPC only
                routes.append(Route(verb.upper(), getattr(rule, verb), rule.body, method.input_type))
    return routes


def input_fields(type_name: str) -> list[str]:
    """The top-level fields of a request message (query parameters, if not bound elsewhere)."""
    for file in _descriptors().file:
        for message in file.message_type:
            if f".{file.package}.{message.name}" == type_name:
                return sorted({n for f in message.field for n in (f.name, f.json_name)})
    raise LookupError(type_name)


def field_names() -> list[str]:
    """Every field name of the featurestore messages, in snake_case and lowerCamel."""
    names = set()
    for file in _descriptors().file:
        if file.package.startswith("featurestore."):
            stack = list(file.message_type)
            while stack:
                message = stack.pop()
                stack.extend(message.nested_type)
                for f in message.field:
                    names.update({f.name, f.json_name})
    return sorted(names)


ROUTES = rest_routes()
FIELDS = field_names()
BOUND = {(r.method, r.template) for r in ROUTES}

# -- strategies ----------------------------------------------------------------

# Text with everything: surrogates (escaped by json.dumps as \udXXX), controls, NUL.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
names = st.sampled_from([FEATURE, GROUP, ENTITY_TYPE, "customer", "FLOAT", "BATCH", "", "x" * 300])
timestamps = st.sampled_from(
    [
        "2026-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "10000-01-01T00:00:00Z",
        "1970-13-45T25:61:61Z",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: past int64 and uint64
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 1.5]),
    any_text,
    names,
    timestamps,
    st.sampled_from(["3.5s", "-5s", "1e9s", "s", "FLOAT_LIST", "VALUE_TYPE_UNSPECIFIED", "99"]),
)
keys = st.one_of(st.sampled_from(FIELDS), any_text)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=25,
)
# Objects shaped like the messages (known field names) are likelier to get past parsing.
shaped = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


def _deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


raw_bodies = st.one_of(
    st.binary(max_size=200),  # not JSON, often not UTF-8
    st.builds(_deep, st.integers(1, 5000), st.sampled_from(["list", "object"])).map(str.encode),
    # A JSON string with bytes that are not UTF-8 inside it.
    st.builds(
        lambda key, raw: b'{"' + key.encode() + b'": "' + raw + b'"}',
        st.sampled_from(FIELDS),
        st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)),
    ),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"{", b'{"a": NaN}', b"\xef\xbb\xbf{}"]),
)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    shaped.map(lambda v: ("json", v)), json_values.map(lambda v: ("json", v)), raw_bodies.map(lambda b: ("raw", b))
)

# Path segments and query values travel percent-encoded; raw bytes may be any.
segment_values = st.one_of(
    names.map(lambda s: quote(s, safe="")),
    any_text.map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=12).map(lambda b: quote_from_bytes(b, safe="")),
    st.sampled_from(["..", ".", "%2e%2e", "a%2Fb", "%5C", "%00", "a/b", "%"]),
)
query_values = st.one_of(
    names,
    any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers().map(str),
    st.sampled_from(["1e3", "-1", "2147483648", "true", "DERIVED", "FEATURE_CATEGORY_UNSPECIFIED", "a,b", "*"]),
    st.binary(max_size=12),
)
query_keys = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(["feature.name", "feature.description", "featureGroup.tags", "update_mask", "page_size"]),
    any_text.filter(bool),
)


def queries(route: Route) -> st.SearchStrategy[list[tuple[str, str | bytes]]]:
    """Mostly the request's own fields (past Envoy's unknown-parameter check), sometimes anything."""
    own = st.sampled_from(input_fields(route.input_type))
    return st.one_of(
        st.lists(st.tuples(own, query_values), max_size=3),
        st.lists(st.tuples(st.one_of(own, query_keys), query_values), max_size=4),
    )


def _query_string(pairs: list[tuple[str, str | bytes]]) -> str:
    parts = []
    for key, value in pairs:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        parts.append(quote(key.encode("utf-8", "surrogatepass"), safe="") + "=" + quote_from_bytes(raw, safe=""))
    return "&".join(parts)


@dataclass(frozen=True)
class Call:
    route: Route
    method: str
    path: str
    body: bytes | None

    def __str__(self) -> str:
        return f"{self.method} {self.path} body={self.body!r}"


def _defuse(route: Route, body: Any) -> Any:
    """Make a registry mutation fail: the existing name on creates, a stale etag elsewhere."""
    if not route.mutation or not isinstance(body, dict):
        return body
    body = dict(body)
    if route.method == "POST":
        body["name"] = GROUP if "group" in route.template else FEATURE
    else:
        body["etag"] = STALE_ETAG
    return body


@st.composite
def calls(draw: st.DrawFn, route: Route) -> Call:
    path = route.template
    for param in re.findall(r"\{[^}]+\}", route.template):
        path = path.replace(param, draw(segment_values), 1)
    pairs = draw(queries(route))
    if route.mutation:
        # No query parameter may name the definition or clear the etag.
        pairs = [(k, v) for k, v in pairs if "name" not in k.lower() and "etag" not in k.lower()]
        if route.method == "DELETE":
            pairs.append(("etag", STALE_ETAG))
    if pairs:
        path += "?" + _query_string(pairs)
    body: bytes | None = None
    if route.body or draw(st.booleans()):
        kind, value = draw(bodies)
        if kind == "json":
            body = _encode(_defuse(route, value))
        elif route.mutation:
            # Raw bodies of a mutation must not parse into a definition: keep only those that are not JSON objects
            # nor empty (the transcoder reads an empty body as an empty message: a PATCH of nothing, which succeeds).
            body = value if value.strip() and not _json_object(value) else b"["
        else:
            body = value
    # Now and then the wrong method on the path: never one bound for it (that would be another route).
    method = draw(st.sampled_from([route.method] * 6 + ["PUT", "GET", "POST", "PATCH", "DELETE"]))
    if method != route.method and any((method, t) in BOUND for t in _templates_matching(route.template)):
        method = "PUT"
    return Call(route, method, path, body)


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def _templates_matching(template: str) -> list[str]:
    """The bound templates a concrete path made from `template` could also match (same shape)."""
    shape = re.sub(r"\{[^}]+\}", "*", template)
    return [t for _, t in BOUND if re.sub(r"\{[^}]+\}", "*", t) == shape]


# -- checks --------------------------------------------------------------------


def assert_status_shape(call: Call, resp: Response) -> None:
    """No 5xx; an error is a JSON google.rpc.Status whose code fits the HTTP status."""
    assert resp.status < 500, f"{call}\n-> {resp.status} {resp.text[:2000]}"
    if 200 <= resp.status < 300:
        json.loads(resp.text)  # a JSON answer (an object, or an array for a stream)
        return
    assert resp.headers.get("content-type") == "application/json", f"{call}\n-> {resp.status} {resp.headers}"
    status = json.loads(resp.text)
    assert isinstance(status, dict), f"{call}\n-> {resp.text}"
    code, message = status.get("code"), status.get("message")
    assert type(code) is int, f"{call}\n-> {resp.text}"
    assert isinstance(message, str), f"{call}\n-> {resp.text}"
    assert resp.status in HTTP_OF_CODE.get(code, set()), f"{call}\n-> HTTP {resp.status} with code {code}: {resp.text}"


def registry_listing(rest: Rest) -> tuple[Any, Any, Any, Any]:
    features = rest.get("/api/feature-registry/features?page_size=1000")
    groups = rest.get("/api/feature-registry/feature-groups?page_size=1000")
    revisions = rest.get(f"/api/feature-registry/features/{FEATURE}/revisions?page_size=1000")
    assert (features.status, groups.status, revisions.status) == (200, 200, 200)
    group = rest.get(f"/api/feature-registry/feature-groups/{GROUP}")
    return features.json(), groups.json(), revisions.json(), group.json()


@pytest.fixture(scope="module")
def seeded(rest: Rest, postgres_dsn: str) -> Iterator[tuple[Any, ...]]:
    """One feature and one group (the targets of every mutation); the listing as seeded."""
    run_sql(postgres_dsn, CLEAR_REGISTRY)
    feature = {"name": FEATURE, "entity_type": ENTITY_TYPE, "value_type": "FLOAT", "description": "seeded"}
    assert rest.post("/api/feature-registry/features", feature).status == 200
    group = {"name": GROUP, "entity_type": ENTITY_TYPE, "feature_names": [FEATURE]}
    assert rest.post("/api/feature-registry/feature-groups", group).status == 200
    yield registry_listing(rest)
    run_sql(postgres_dsn, CLEAR_REGISTRY)


# -- tests ---------------------------------------------------------------------


def test_every_route_is_fuzzed() -> None:
    """The routes come from the descriptor set: every binding written in protos/, all four verbs."""
    protos = DESCRIPTOR_SET.parent.parent / "protos" / "featurestore"
    written = sum(p.read_text().count("option (google.api.http)") for p in protos.rglob("*.proto"))
    assert len(ROUTES) == written == len(BOUND), [str(r) for r in ROUTES]
    assert {r.method for r in ROUTES} == {"GET", "POST", "PATCH", "DELETE"}
    assert any(r.template == "/api/feature-store/training-dataset" for r in ROUTES)


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_arbitrary_requests_never_5xx_and_change_nothing(rest: Rest, seeded: tuple[Any, ...], route: Route) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=calls(route))
    def check(call: Call) -> None:
        resp = rest.request(call.method, call.path, call.body)
        assert_status_shape(call, resp)
        if route.mutation:
            assert not 200 <= resp.status < 300, f"a mutation meant to fail succeeded: {call}\n-> {resp.text}"
            assert registry_listing(rest) == seeded, f"the registry changed after {call}"

    check()
    assert registry_listing(rest) == seeded


# The server must answer INVALID_ARGUMENT when a string field of the request it gets is not
# UTF-8. Envoy checks JSON bodies itself; path and query parameters reach the server as bytes.
NOT_UTF8 = ["%FF", "%C3%28", "%ED%A0%80", "a%80b"]  # stray byte, bad continuation, a surrogate, mid-string


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("raw", NOT_UTF8)
@pytest.mark.parametrize(
    "path",
    [
        "/api/feature-registry/features?owner={}",
        "/api/feature-registry/feature-groups?tag={}",
        "/api/feature-registry/features/{}",
        "/api/feature-registry/features/{}/revisions",
    ],
)
def test_bytes_not_utf8_in_path_or_query_are_400(rest: Rest, path: str, raw: str) -> None:
    resp = rest.get(path.format(raw))
    assert resp.status == 400, resp.text
    assert resp.headers["content-type"] == "application/json"
    status = resp.json()
    assert status["code"] == 3, status
    assert "DecodeError" not in status["message"]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b"])
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/feature-registry/features", "description"),
        ("/api/feature-store/features", "entity_id"),
        ("/api/feature-store/write-features", "entity_type"),
    ],
)
def test_bytes_not_utf8_in_a_json_string_are_400(rest: Rest, path: str, field: str, raw: bytes) -> None:
    body = b'{"' + field.encode() + b'": "' + raw + b'", "entity_type": "' + ENTITY_TYPE.encode() + b'"}'
    resp = rest.request("POST", path, body)
    assert resp.status == 400, resp.text
    status = resp.json()
    assert status["code"] == 3, status
    assert isinstance(status["message"], str), status


@pytest.mark.usefixtures("seeded")
def test_escaped_slash_oversized_body_and_headers_are_json(rest: Rest) -> None:
    """Envoy's own refusals for the limits it sets: JSON statuses with the right HTTP codes."""
    resp = rest.get(f"/api/feature-registry/features/{FEATURE}%2Fx")
    assert (resp.status, resp.json()["code"]) == (400, 3), resp.text
    assert "escaped slash" in resp.json()["message"]
    big = json.dumps(
        {"name": "big", "entity_type": ENTITY_TYPE, "value_type": "FLOAT", "description": "d" * (17 << 20)}
    )
    resp = rest.request("POST", "/api/feature-registry/features", big)
    assert (resp.status, resp.json()["code"]) == (413, 8), resp.text
    assert resp.headers["content-type"] == "application/json"


def _get_with_headers(envoy: Proc, path: str, headers: dict[str, str]) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
    finally:
        conn.close()


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"x_api_key": "1"}, 400, 3),  # an underscore header is refused, not passed on
        ({"x-big": "a" * (61 << 10)}, 431, 8),  # past 60 KiB of headers
        ({f"x-h{i}": "1" for i in range(101)}, 431, 8),  # past 100 headers
    ],
)
def test_header_limits_answer_json(envoy: Proc, headers: dict[str, str], status: int, code: int) -> None:
    resp = _get_with_headers(envoy, "/api/feature-registry/features", headers)
    assert resp.status == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["code"] == code


@pytest.mark.usefixtures("seeded")
def test_access_log_is_one_json_line_per_request_without_bodies(envoy: Proc, server: Proc) -> None:
    """Envoy logs method, REST and gRPC path, status, the server's grpc-status, trace ids; no body."""
    marker = "0af7651916cd43dd8448eb211c80319c"
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    secret = "do-not-log-this-body"
    body = json.dumps({"entity_type": ENTITY_TYPE, "entity_id": secret, "feature_names": ["missing_feature"]})
    conn.request(
        "POST",
        "/api/feature-store/features",
        body=body,
        headers={"Content-Type": "application/json", "traceparent": f"00-{marker}-b7ad6b7169203331-01"},
    )
    resp = conn.getresponse()
    assert resp.status == 400, resp.read()
    conn.close()
    deadline = time.monotonic() + 20  # Envoy flushes its log every 10 s
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        text = envoy.log.read_text(errors="replace")
        assert secret not in text
        lines = [json.loads(line) for line in text.splitlines() if marker in line]
        time.sleep(0.2)
    assert len(lines) == 1, lines
    entry = lines[0]
    assert entry["method"] == "POST"
    assert entry["path"] == "/api/feature-store/features"
    assert entry["grpc_path"] == "/featurestore.serving.v1.FeatureStoreService/GetFeaturesJson"
    assert (entry["status"], int(entry["grpc_status"])) == (400, 3)  # INVALID_ARGUMENT, as the server said
    assert entry["traceparent"] == f"00-{marker}-b7ad6b7169203331-01"
    assert entry["request_id"]
    assert entry["upstream_host"] == f"127.0.0.1:{server.port}"
    assert entry["bytes_received"] == len(body)


def test_admin_interface_stays_on_loopback() -> None:
    """The admin port can drain and stop Envoy: loopback as written and as the stack runs it."""
    as_written: Any = yaml.safe_load((DESCRIPTOR_SET.parent / "envoy.yaml").read_text())
    as_run: Any = envoy_config(8080, 9901, 50051)
    for config in (as_written, as_run):
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.usefixtures("seeded")
def test_an_answer_over_a_mebibyte_is_served(rest: Rest) -> None:
    """A unary answer is held whole to be transcoded; past Envoy's default buffer (1 MiB) it was a 500."""
    ids = [f"entity{i:06d}" for i in range(20_000)]
    body = {"entity_type": ENTITY_TYPE, "entity_ids": ids, "feature_names": [FEATURE]}
    resp = rest.post("/api/feature-store/batch-features", body)
    assert resp.status == 200, resp.text[:500]
    assert len(resp.text) > 1 << 20
    assert [e["entity_id"] for e in resp.json()["entities"]] == ids
