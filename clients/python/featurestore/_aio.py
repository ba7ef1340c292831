"""The asyncio client (grpc.aio): the same surface as `Client`, with coroutines and async iterators."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc
from grpc import aio

from featurestore import _common as c
from featurestore._errors import Unavailable, from_rpc_error
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
TokenCallback = Callable[[], "str | Awaitable[str]"]


class AsyncClient(c.ClientBase[TokenCallback]):
    """The feature store's asyncio client, for model servers: `Client`'s surface, awaited.

    >>> async with AsyncClient("localhost:50051", timeout=0.05) as fs:
    ...     values = await fs.get_features("customer", "customer123", groups="customer_rfm_features")

    Create it inside the running event loop and reuse it for every request. List and
    history methods return async iterators (`async for`); `push()` is an async context.
    `token_callback` may be a function or a coroutine function.
    """

    channel: aio.Channel

    def _connect(self, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        target = self.target
        self.channel = (
            aio.secure_channel(target, creds, options=options)
            if creds
            else aio.insecure_channel(target, options=options)
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

    async def close(self) -> None:
        """Close the channel (calls in progress are cancelled)."""
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected (Unavailable after `timeout` seconds)."""
        import asyncio

        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout} s") from None

    async def _md(self) -> tuple[tuple[str, str], ...] | None:
        if self._token_callback is not None:
            token = self._token_callback()
            if inspect.isawaitable(token):
                token = await token
            return c.auth_metadata(token)
        return self._metadata

    async def _unary(self, method: aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None) -> Resp:
        metadata = self._metadata if self._token_callback is None else await self._md()
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout, metadata=metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def _stream(
        self, method: aio.UnaryStreamMultiCallable[Req, Resp], request: Req, timeout: float | None
    ) -> AsyncIterator[Resp]:
        call = method(request, timeout=self.stream_timeout if timeout is None else timeout, metadata=await self._md())
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def value_types(
        self, names: Iterable[str], *, timeout: float | None = None, fresh: bool = False
    ) -> dict[str, str]:
        """The value type names of features, read from the registry once per client (`fresh=True`: again)."""
        wanted = list(names)
        for name in self._types_to_read(wanted, fresh):
            self._remember_type(name, await self.get_feature(name, timeout=timeout))
        return self._known_types(wanted)

    async def _pages(
        self, method: aio.UnaryUnaryMultiCallable[PageReq, Page], request: PageReq, timeout: float | None
    ) -> AsyncIterator[Page]:
        """The responses of a paged call, following `next_page_token`."""
        while True:
            page = await self._unary(method, request, timeout)
            yield page
            if not c.next_page(request, page):
                return

    # -- online

    async def get_features(
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
        return c.vector_of(await self._unary(self.store.GetFeatures, request, timeout))

    @overload
    async def batch_get_features(
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
    async def batch_get_features(
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

    async def batch_get_features(
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
        """The latest values of many entities: records, a DataFrame or a Table (see `Client`)."""
        request = c.batch_request(entity_type, entity_ids, features, groups)
        if output == "records":
            return c.batch_records(await self._unary(self.store.BatchGetFeatures, request, timeout))
        body = await self._unary(self._batch_bytes, request, timeout)
        frame = c.BytesFrame(body, features, include_status, include_event_time)
        return frame.output(await self.value_types(frame.missing), output)

    # -- offline

    async def iter_history(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        *,
        start: Any = None,
        end: Any = None,
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> AsyncIterator[FeatureResult]:
        """Every value of the features in [start, end), by event time then name, following pages."""
        request = c.history_request(entity_type, entity_id, features, start, end, page_size)
        async for page in self._pages(self.store.GetHistoricalFeatures, request, timeout):
            for fv in page.values:
                yield feature_result(fv)

    @overload
    async def history(
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
    async def history(
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

    async def history(
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
        """The history as records, or a DataFrame / Table with one row per event time (see `Client`)."""
        request = c.history_request(entity_type, entity_id, features, start, end, page_size)
        pages = self._pages(self.store.GetHistoricalFeatures, request, timeout)
        values = [fv async for page in pages for fv in page.values]
        if output == "records":
            return [feature_result(fv) for fv in values]
        frame = c.history_frame(values, features)
        return frame.output(await self.value_types(frame.missing), output)

    async def _feature_names(self, features: Sequence[str], groups: Sequence[str], timeout: float | None) -> list[str]:
        out = list(features)
        for group in groups:
            out += (await self.get_feature_group(group, timeout=timeout)).feature_names
        return out

    async def iter_training_dataset(
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
    ) -> AsyncIterator[fs.GetTrainingDatasetResponse]:
        """The GetTrainingDataset responses for the entity rows, sent in requests of bounded size."""
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        async for response in self._training_chunks(query, timeout):
            yield response

    async def _training_chunks(
        self, query: c.TrainingQuery, timeout: float | None
    ) -> AsyncIterator[fs.GetTrainingDatasetResponse]:
        n_features = len(await self._feature_names(query.features, query.groups, timeout))
        for request in query.requests(n_features, self.chunk_values):
            async for response in self._stream(self.store.GetTrainingDataset, request, timeout):
                yield response

    async def _training_frame(
        self, query: c.TrainingQuery, include_status: bool, timeout: float | None
    ) -> c.TrainingFrame:
        names = await self._feature_names(query.features, query.groups, timeout)
        return c.TrainingFrame(query, names, await self.value_types(names, timeout=timeout, fresh=True), include_status)

    async def training_dataset(
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
        """Point-in-time correct training data: a DataFrame, a pyarrow Table, or records (see `Client`)."""
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        if output == "records":
            chunks = self._training_chunks(query, timeout)
            return [c.training_record(e, include_status) async for chunk in chunks for e in chunk.examples]
        frame = await self._training_frame(query, include_status, timeout)
        async for chunk in self._training_chunks(query, timeout):
            frame.add(chunk)
        return frame.output(output)

    async def training_dataset_to_parquet(
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
        """Write the training dataset to a Parquet file chunk by chunk; returns the row count."""
        query = c.TrainingQuery(entity_type, rows, features, groups, max_age, entity_column, timestamp_column)
        with c.ParquetSink(path, rows, progress) as sink:
            frame = await self._training_frame(query, include_status, timeout)
            async for chunk in self._training_chunks(query, timeout):
                sink.write(frame.columns(chunk.examples))
            sink.finish(frame.columns([]))  # no rows: an empty file with the schema
        return sink.rows

    # -- writes

    async def _entity_rows(self, rows: c.EntityRows) -> list[fs.EntityRow]:
        out: list[fs.EntityRow] = []
        for chunk in rows.chunks():
            out += rows.convert(chunk, await self.value_types(rows.columns(chunk)))
        return out

    async def write_features(
        self,
        entity_type: str,
        rows: c.Rows,
        *,
        entity_column: str = "entity_id",
        event_time_column: str = "event_time",
        event_time: Any = None,
        timeout: float | None = None,
    ) -> c.WriteResult:
        """Write feature values in requests of at most `chunk_values` values (see `Client`). Not retried."""
        total = c.WriteResult()
        entity_rows = await self._entity_rows(c.EntityRows(rows, entity_column, event_time_column, event_time))
        for request in c.write_requests(
            fs.WriteFeaturesRequest, entity_type, entity_rows, self.chunk_values, self.max_message_bytes
        ):
            response = await self._unary(self.store.WriteFeatures, request, timeout)
            total += c.write_result(response)
        return total

    def push(self, entity_type: str, *, timeout: float | None = None) -> AsyncPusher:
        """A PushFeatures stream: `async with client.push("customer") as p: await p.send(rows)`."""
        return AsyncPusher(self, entity_type, self.stream_timeout if timeout is None else timeout)

    # -- registry

    async def create_feature(
        self, feature: pb.Feature | Mapping[str, Any], *, timeout: float | None = None
    ) -> pb.Feature:
        """Register a feature (a message, or its JSON fields as in the REST body)."""
        request = rs.CreateFeatureRequest(feature=c.as_feature(feature))
        return await self._unary(self.registry.CreateFeature, request, timeout)

    async def get_feature(self, name: str, *, timeout: float | None = None) -> pb.Feature:
        """One feature by name."""
        return await self._unary(self.registry.GetFeature, rs.GetFeatureRequest(name=name), timeout)

    async def list_features(
        self,
        *,
        entity_type: str = "",
        owner: str = "",
        tag: str = "",
        category: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.Feature]:
        """Every feature matching the filters, in name order, following pages."""
        request = c.list_features_request(entity_type, owner, tag, category, page_size)
        async for page in self._pages(self.registry.ListFeatures, request, timeout):
            for feature in page.features:
                yield feature

    async def update_feature(
        self,
        feature: pb.Feature | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.Feature:
        """Change a feature (mask and etag rules as in `Client.update_feature`)."""
        request = c.update_feature_request(feature, update_mask, etag)
        return await self._unary(self.registry.UpdateFeature, request, timeout)

    async def delete_feature(self, name: str, *, etag: str = "", timeout: float | None = None) -> None:
        """Delete a feature (only if its etag still equals `etag`, when given)."""
        await self._unary(self.registry.DeleteFeature, rs.DeleteFeatureRequest(name=name, etag=etag), timeout)
        self._types.pop(name, None)

    async def list_feature_revisions(
        self, name: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[pb.Feature]:
        """Every past and current definition of a feature, newest first."""
        request = rs.ListFeatureRevisionsRequest(name=name, page_size=page_size)
        async for page in self._pages(self.registry.ListFeatureRevisions, request, timeout):
            for feature in page.features:
                yield feature

    async def create_feature_group(
        self, group: pb.FeatureGroup | Mapping[str, Any], *, timeout: float | None = None
    ) -> pb.FeatureGroup:
        """Register a feature group (a message, or its JSON fields)."""
        request = rs.CreateFeatureGroupRequest(feature_group=c.as_group(group))
        return await self._unary(self.registry.CreateFeatureGroup, request, timeout)

    async def get_feature_group(self, name: str, *, timeout: float | None = None) -> pb.FeatureGroup:
        """One feature group by name."""
        return await self._unary(self.registry.GetFeatureGroup, rs.GetFeatureGroupRequest(name=name), timeout)

    async def list_feature_groups(
        self,
        *,
        entity_type: str = "",
        owner: str = "",
        tag: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.FeatureGroup]:
        """Every feature group matching the filters, in name order, following pages."""
        request = rs.ListFeatureGroupsRequest(entity_type=entity_type, owner=owner, tag=tag, page_size=page_size)
        async for page in self._pages(self.registry.ListFeatureGroups, request, timeout):
            for group in page.feature_groups:
                yield group

    async def update_feature_group(
        self,
        group: pb.FeatureGroup | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.FeatureGroup:
        """Change a feature group (mask and etag rules as in `Client.update_feature`)."""
        request = c.update_group_request(group, update_mask, etag)
        return await self._unary(self.registry.UpdateFeatureGroup, request, timeout)

    async def delete_feature_group(self, name: str, *, etag: str = "", timeout: float | None = None) -> None:
        """Delete a feature group (its features stay)."""
        request = rs.DeleteFeatureGroupRequest(name=name, etag=etag)
        await self._unary(self.registry.DeleteFeatureGroup, request, timeout)


class AsyncPusher:
    """An open PushFeatures stream (see `AsyncClient.push`)."""

    def __init__(self, client: AsyncClient, entity_type: str, timeout: float) -> None:
        self._client = client
        self.entity_type = entity_type
        self.result: c.WriteResult | None = None
        self._timeout = timeout
        self._call: Any = None

    async def __aenter__(self) -> AsyncPusher:
        metadata = await self._client._md()
        self._call = self._client.store.PushFeatures(timeout=self._timeout, metadata=metadata)  # type: ignore[call-arg]
        return self

    async def send(
        self,
        rows: c.Rows,
        *,
        entity_column: str = "entity_id",
        event_time_column: str = "event_time",
        event_time: Any = None,
    ) -> None:
        """Send rows (as `write_features` takes them), in batches of at most `chunk_values` values."""
        if self._call is None:
            raise RuntimeError("use `async with client.push(...) as pusher`")
        client = self._client
        entity_rows = await client._entity_rows(c.EntityRows(rows, entity_column, event_time_column, event_time))
        for request in c.write_requests(
            fs.PushFeaturesRequest, self.entity_type, entity_rows, client.chunk_values, client.max_message_bytes
        ):
            try:
                await self._call.write(request)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            except Exception:  # the call already ended (InvalidStateError): report the server's status
                await self._finish()
                raise

    async def _finish(self) -> c.WriteResult:
        try:
            response = await self._call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        self.result = c.write_result(response)
        return self.result

    async def close(self) -> c.WriteResult:
        """End the stream and wait for the server's totals."""
        if self.result is None:
            try:
                await self._call.done_writing()
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            await self._finish()
        assert self.result is not None
        return self.result

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            self._call.cancel()
