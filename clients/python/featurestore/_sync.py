"""The synchronous client."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc

from featurestore import _common as c
from featurestore._errors import FeatureStoreError, Unavailable, from_rpc_error
from featurestore._values import FeatureResult, feature_result
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import feature_store_service_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
PageReq = TypeVar("PageReq", bound=c.PageRequest)
Page = TypeVar("Page", bound=c.Page)


class Client(c.ClientBase[Callable[[], str]]):
    """The feature store's synchronous client: one long-lived channel to the server (gRPC).

    >>> with Client("localhost:50051") as fs:
    ...     fs.get_features("customer", "customer123", ["customer_total_purchases_30d"])

    Every call has a deadline (`timeout` seconds for unary calls, `stream_timeout` for
    streams; each method takes `timeout=` to override it). Idempotent calls (reads) are
    retried on UNAVAILABLE with jittered exponential backoff (`retry`; None disables it);
    writes are never retried. `token` or `token_callback` (called before each call, so it
    can refresh) sends `authorization: Bearer <token>`; `tls=True` or `root_certificates`
    makes the channel TLS. Errors are `FeatureStoreError` subclasses.

    `registry` and `store` are the bare generated stubs on the same channel.
    """

    channel: grpc.Channel

    def _connect(self, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        target = self.target
        self.channel = (
            grpc.secure_channel(target, creds, options=options)
            if creds
            else grpc.insecure_channel(target, options=options)
        )
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)
        self.store = feature_store_service_pb2_grpc.FeatureStoreServiceStub(self.channel)
        # BatchGetFeatures answering bytes, for frames (decoded without building messages).
        self._batch_bytes = self.channel.unary_unary(
            c.BATCH_GET_FEATURES,
            request_serializer=fs.BatchGetFeaturesRequest.SerializeToString,
            response_deserializer=None,
        )

    # -- plumbing

    def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (Unavailable after `timeout` seconds)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout} s") from None

    def _md(self) -> tuple[tuple[str, str], ...] | None:
        if self._token_callback is not None:
            return c.auth_metadata(self._token_callback())
        return self._metadata

    def _unary(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None) -> Resp:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._md())
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[Req, Resp], request: Req, timeout: float | None
    ) -> Iterator[Resp]:
        call = method(request, timeout=self.stream_timeout if timeout is None else timeout, metadata=self._md())
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the stream ended; frees the call when the caller stops early

    def value_types(self, names: Iterable[str], *, timeout: float | None = None, fresh: bool = False) -> dict[str, str]:
        """The value type names (`"FLOAT"`, ...) of features, read from the registry once per client.

        `fresh=True` reads them again (a feature may have been deleted and recreated with
        another type since): training sets do, since they type columns before any value arrives.
        """
        wanted = list(names)
        for name in self._types_to_read(wanted, fresh):
            self._remember_type(name, self.get_feature(name, timeout=timeout))
        return self._known_types(wanted)

    def _pages(
        self, method: grpc.UnaryUnaryMultiCallable[PageReq, Page], request: PageReq, timeout: float | None
    ) -> Iterator[Page]:
        """The responses of a paged call, following `next_page_token`."""
        while True:
            page = self._unary(method, request, timeout)
            yield page
            if not c.next_page(request, page):
                return

    # -- online

    def get_features(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        timeout: float | None = None,
    ) -> c.FeatureVector:
        """The latest values of one entity's features (and groups' features), by name."""
        request = c.get_features_request(entity_type, entity_id, features, groups)
        return c.vector_of(self._unary(self.store.GetFeatures, request, timeout))

    @overload
    def batch_get_features(
        self,
        entity_type: str,
        entity_ids: Sequence[str],
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        output: Literal["records"] = "records",
        include_status: bool = False,
        include_event_time: bool = False,
        timeout: float | None = None,
    ) -> list[c.FeatureVector]: ...

    @overload
    def batch_get_features(
        self,
        entity_type: str,
        entity_ids: Sequence[str],
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        output: Literal["pandas", "arrow"],
        include_status: bool = False,
        include_event_time: bool = False,
        timeout: float | None = None,
    ) -> Any: ...

    def batch_get_features(
        self,
        entity_type: str,
        entity_ids: Sequence[str],
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        output: c.Output = "records",
        include_status: bool = False,
        include_event_time: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The latest values of many entities, in request order.

        `output="records"` gives a list of FeatureVector; `"pandas"` a DataFrame and `"arrow"`
        a pyarrow Table with an `entity_id` column and one typed column per feature (plus
        `<name>__status` and `<name>__event_time` columns when asked).
        """
        request = c.batch_request(entity_type, entity_ids, features, groups)
        if output == "records":
            return c.batch_records(self._unary(self.store.BatchGetFeatures, request, timeout))
        body = self._unary(self._batch_bytes, request, timeout)
        frame = c.BytesFrame(body, features, include_status, include_event_time)
        return frame.output(self.value_types(frame.missing), output)

    # -- offline

    def iter_history(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        *,
        start: Any = None,
        end: Any = None,
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> Iterator[FeatureResult]:
        """Every value of the features in [start, end), by event time then name, following pages."""
        request = c.history_request(entity_type, entity_id, features, start, end, page_size)
        for page in self._pages(self.store.GetHistoricalFeatures, request, timeout):
            for fv in page.values:
                yield feature_result(fv)

    @overload
    def history(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        *,
        start: Any = None,
        end: Any = None,
        output: Literal["pandas", "arrow"] = "pandas",
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> Any: ...

    @overload
    def history(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        *,
        start: Any = None,
        end: Any = None,
        output: Literal["records"],
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> list[FeatureResult]: ...

    def history(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        *,
        start: Any = None,
        end: Any = None,
        output: c.Output = "pandas",
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> Any:
        """The history as a list of FeatureResult, or a DataFrame / Table with one row per event time.

        The frame's columns are `event_time` and one typed column per feature (missing where a
        feature has no value at that time).
        """
        request = c.history_request(entity_type, entity_id, features, start, end, page_size)
        pages = self._pages(self.store.GetHistoricalFeatures, request, timeout)
        values = [fv for page in pages for fv in page.values]
        if output == "records":
            return [feature_result(fv) for fv in values]
        frame = c.history_frame(values, features)
        return frame.output(self.value_types(frame.missing), output)

    def _feature_names(self, features: Sequence[str], groups: Sequence[str], timeout: float | None) -> list[str]:
        out = list(features)
        for group in groups:
            out += self.get_feature_group(group, timeout=timeout).feature_names
        return out

    def iter_training_dataset(
        self,
        entity_type: str,
        rows: c.Rows,
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        max_age: float | timedelta | None = None,
        entity_column: str = "entity_id",
        timestamp_column: str = "timestamp",
        timeout: float | None = None,
    ) -> Iterator[fs.GetTrainingDatasetResponse]:
        """The GetTrainingDataset responses for the entity rows, sent in requests of bounded size.

        `rows` (a DataFrame, a pyarrow Table or an iterable of mappings) has an entity id and a
        timestamp column; its other columns (labels) are passed through as extras.
        """
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        yield from self._training_chunks(query, timeout)

    def _training_chunks(
        self, query: c.TrainingQuery, timeout: float | None
    ) -> Iterator[fs.GetTrainingDatasetResponse]:
        n_features = len(self._feature_names(query.features, query.groups, timeout))
        for request in query.requests(n_features, self.chunk_values):
            yield from self._stream(self.store.GetTrainingDataset, request, timeout)

    def _training_frame(self, query: c.TrainingQuery, include_status: bool, timeout: float | None) -> c.TrainingFrame:
        names = self._feature_names(query.features, query.groups, timeout)
        return c.TrainingFrame(query, names, self.value_types(names, timeout=timeout, fresh=True), include_status)

    def training_dataset(
        self,
        entity_type: str,
        rows: c.Rows,
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        max_age: float | timedelta | None = None,
        entity_column: str = "entity_id",
        timestamp_column: str = "timestamp",
        output: c.Output = "pandas",
        include_status: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Point-in-time correct training data: a DataFrame, a pyarrow Table, or records.

        Columns: `entity_id`, `timestamp`, the rows' extra columns, then one typed column per
        feature (`<name>__status` too with `include_status`). For datasets larger than memory
        use `training_dataset_to_parquet`.
        """
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        if output == "records":
            chunks = self._training_chunks(query, timeout)
            return [c.training_record(e, include_status) for chunk in chunks for e in chunk.examples]
        frame = self._training_frame(query, include_status, timeout)
        for chunk in self._training_chunks(query, timeout):
            frame.add(chunk)
        return frame.output(output)

    def training_dataset_to_parquet(
        self,
        entity_type: str,
        rows: c.Rows,
        path: str | Path,
        features: str | Sequence[str] = (),
        *,
        groups: str | Sequence[str] = (),
        max_age: float | timedelta | None = None,
        entity_column: str = "entity_id",
        timestamp_column: str = "timestamp",
        include_status: bool = True,
        progress: c.ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> int:
        """Write the training dataset to a Parquet file chunk by chunk; returns the row count.

        Memory stays bounded by one request's rows and one response chunk. `progress(done,
        total)` is called after each chunk (total is -1 when `rows` has no length).
        """
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        with c.ParquetSink(path, rows, progress) as sink:
            frame = self._training_frame(query, include_status, timeout)
            for chunk in self._training_chunks(query, timeout):
                sink.write(frame.columns(chunk.examples))
            sink.finish(frame.columns([]))  # no rows: an empty file with the schema
        return sink.rows

    # -- writes

    def _entity_rows(self, rows: c.EntityRows) -> Iterator[fs.EntityRow]:
        for chunk in rows.chunks():
            yield from rows.convert(chunk, self.value_types(rows.columns(chunk)))

    def write_features(
        self,
        entity_type: str,
        rows: c.Rows,
        *,
        entity_column: str = "entity_id",
        event_time_column: str = "event_time",
        event_time: Any = None,
        timeout: float | None = None,
    ) -> c.WriteResult:
        """Write feature values: each row has an entity id, an event time and feature columns.

        `rows` is a DataFrame, a pyarrow Table, or an iterable of mappings (or EntityRow
        messages). Missing values (None, NaN, NA) are not written. The rows are sent in
        requests of at most `chunk_values` values, one after the other; a failed request
        raises, and the requests before it stay written (writing again is harmless).
        Not retried automatically.
        """
        total = c.WriteResult()
        entity_rows = self._entity_rows(c.EntityRows(rows, entity_column, event_time_column, event_time))
        for request in c.write_requests(
            fs.WriteFeaturesRequest, entity_type, entity_rows, self.chunk_values, self.max_message_bytes
        ):
            response = self._unary(self.store.WriteFeatures, request, timeout)
            total += c.write_result(response)
        return total

    def push(self, entity_type: str, *, timeout: float | None = None) -> Pusher:
        """A PushFeatures stream for a producer: `with client.push("customer") as p: p.send(rows)`.

        Each `send` is one or more batches, applied by the server as they arrive. Leaving the
        block closes the stream and sets `p.result` (totals); an error in the block cancels it.
        """
        return Pusher(self, entity_type, self.stream_timeout if timeout is None else timeout)

    # -- registry

    def create_feature(self, feature: pb.Feature | Mapping[str, Any], *, timeout: float | None = None) -> pb.Feature:
        """Register a feature (a message, or its JSON fields as in the REST body)."""
        request = rs.CreateFeatureRequest(feature=c.as_feature(feature))
        return self._unary(self.registry.CreateFeature, request, timeout)

    def get_feature(self, name: str, *, timeout: float | None = None) -> pb.Feature:
        """One feature by name."""
        return self._unary(self.registry.GetFeature, rs.GetFeatureRequest(name=name), timeout)

    def list_features(
        self,
        *,
        entity_type: str = "",
        owner: str = "",
        tag: str = "",
        category: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.Feature]:
        """Every feature matching the filters, in name order, following pages."""
        request = c.list_features_request(entity_type, owner, tag, category, page_size)
        for page in self._pages(self.registry.ListFeatures, request, timeout):
            yield from page.features

    def update_feature(
        self,
        feature: pb.Feature | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.Feature:
        """Change a feature. Without `update_mask`, the fields set change; `["*"]` replaces all.

        With an `etag` (or one in the feature), the change is made only if nobody changed the
        feature since (else EtagMismatch).
        """
        request = c.update_feature_request(feature, update_mask, etag)
        return self._unary(self.registry.UpdateFeature, request, timeout)

    def delete_feature(self, name: str, *, etag: str = "", timeout: float | None = None) -> None:
        """Delete a feature (only if its etag still equals `etag`, when given)."""
        self._unary(self.registry.DeleteFeature, rs.DeleteFeatureRequest(name=name, etag=etag), timeout)
        self._types.pop(name, None)

    def list_feature_revisions(
        self, name: str, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[pb.Feature]:
        """Every past and current definition of a feature, newest first."""
        request = rs.ListFeatureRevisionsRequest(name=name, page_size=page_size)
        for page in self._pages(self.registry.ListFeatureRevisions, request, timeout):
            yield from page.features

    def create_feature_group(
        self, group: pb.FeatureGroup | Mapping[str, Any], *, timeout: float | None = None
    ) -> pb.FeatureGroup:
        """Register a feature group (a message, or its JSON fields)."""
        request = rs.CreateFeatureGroupRequest(feature_group=c.as_group(group))
        return self._unary(self.registry.CreateFeatureGroup, request, timeout)

    def get_feature_group(self, name: str, *, timeout: float | None = None) -> pb.FeatureGroup:
        """One feature group by name."""
        return self._unary(self.registry.GetFeatureGroup, rs.GetFeatureGroupRequest(name=name), timeout)

    def list_feature_groups(
        self,
        *,
        entity_type: str = "",
        owner: str = "",
        tag: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.FeatureGroup]:
        """Every feature group matching the filters, in name order, following pages."""
        request = rs.ListFeatureGroupsRequest(entity_type=entity_type, owner=owner, tag=tag, page_size=page_size)
        for page in self._pages(self.registry.ListFeatureGroups, request, timeout):
            yield from page.feature_groups

    def update_feature_group(
        self,
        group: pb.FeatureGroup | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.FeatureGroup:
        """Change a feature group, with the same mask and etag rules as `update_feature`."""
        request = c.update_group_request(group, update_mask, etag)
        return self._unary(self.registry.UpdateFeatureGroup, request, timeout)

    def delete_feature_group(self, name: str, *, etag: str = "", timeout: float | None = None) -> None:
        """Delete a feature group (its features stay)."""
        self._unary(self.registry.DeleteFeatureGroup, rs.DeleteFeatureGroupRequest(name=name, etag=etag), timeout)


_END = object()


class Pusher:
    """An open PushFeatures stream (see `Client.push`)."""

    def __init__(self, client: Client, entity_type: str, timeout: float) -> None:
        self._client = client
        self.entity_type = entity_type
        self.result: c.WriteResult | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._sent = 0
        self._future: grpc.Future[fs.PushFeaturesResponse] = client.store.PushFeatures.future(
            self._requests(), timeout=timeout, metadata=client._md()
        )
        self._lock = threading.Lock()

    def _requests(self) -> Iterator[fs.PushFeaturesRequest]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    def _put(self, item: Any) -> None:
        while True:
            if self._future.done():
                self._raise("the server ended the stream")
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _release(self) -> None:
        """Let the thread that feeds the stream end, should it be waiting for a batch."""
        with contextlib.suppress(queue.Full):  # full: it is not waiting
            self._queue.put_nowait(_END)

    def _raise(self, what: str) -> None:
        self._release()
        try:
            self._future.result()
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        raise FeatureStoreError(what)

    def send(
        self,
        rows: c.Rows,
        *,
        entity_column: str = "entity_id",
        event_time_column: str = "event_time",
        event_time: Any = None,
    ) -> None:
        """Send rows (as `write_features` takes them), in batches of at most `chunk_values` values."""
        client = self._client
        entity_rows = client._entity_rows(c.EntityRows(rows, entity_column, event_time_column, event_time))
        requests = c.write_requests(
            fs.PushFeaturesRequest, self.entity_type, entity_rows, client.chunk_values, client.max_message_bytes
        )
        with self._lock:
            for request in requests:
                self._put(request)
                self._sent += 1

    def close(self) -> c.WriteResult:
        """End the stream and wait for the server's totals."""
        if self.result is None:
            self._put(_END)
            try:
                response = self._future.result()
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            self.result = c.write_result(response)
        return self.result

    def cancel(self) -> None:
        """Abandon the stream (batches the server applied stay written)."""
        self._future.cancel()
        self._release()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()
