"""The asyncio client (grpc.aio): the same surface as `Client`, with coroutines and async iterators."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc
from google.protobuf import field_mask_pb2
from grpc import aio

from featurestore import _common as c
from featurestore import _frames
from featurestore._errors import Unavailable, from_rpc_error
from featurestore._values import FeatureResult, feature_result, value_type_name
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import feature_store_service_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Output = Literal["records", "pandas", "arrow"]
TokenCallback = Callable[[], "str | Awaitable[str]"]


class AsyncClient:
    """The feature store's asyncio client, for model servers: `Client`'s surface, awaited.

    >>> async with AsyncClient("localhost:50051", timeout=0.05) as fs:
    ...     values = await fs.get_features("customer", "customer123", groups="customer_rfm_features")

    Create it inside the running event loop and reuse it for every request. List and
    history methods return async iterators (`async for`); `push()` is an async context.
    `token_callback` may be a function or a coroutine function.
    """

    def __init__(
        self,
        target: str = c.DEFAULT_TARGET,
        *,
        token: str | None = None,
        token_callback: TokenCallback | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 10.0,
        stream_timeout: float = 600.0,
        retry: c.RetryPolicy | None = c.RetryPolicy(),  # noqa: B008 (frozen)
        max_message_bytes: int = c.DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: float | None = 30.0,
        chunk_values: int = c.DEFAULT_CHUNK_VALUES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if token and token_callback:
            raise ValueError("pass token or token_callback, not both")
        self.target = target
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.chunk_values = chunk_values
        self.max_message_bytes = max_message_bytes
        self._token_callback = token_callback
        self._metadata = c.auth_metadata(token)
        opts = c.channel_options(retry, max_message_bytes, keepalive, options)
        creds = c.credentials(tls, root_certificates)
        self.channel: aio.Channel = (
            aio.secure_channel(target, creds, options=opts) if creds else aio.insecure_channel(target, options=opts)
        )
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)
        self.store = feature_store_service_pb2_grpc.FeatureStoreServiceStub(self.channel)
        self._types: dict[str, str] = {}

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
        out = {}
        for name in names:
            if fresh or name not in self._types:
                self._types[name] = value_type_name((await self.get_feature(name, timeout=timeout)).value_type)
            out[name] = self._types[name]
        return out

    async def _column_types(
        self, names: Sequence[str], rows: Sequence[Sequence[fs.FeatureValue]]
    ) -> dict[str, str | None]:
        types: dict[str, str | None] = {}
        missing = []
        for j, name in enumerate(names):
            types[name] = _frames.observed_type(row[j].value for row in rows)
            if types[name] is None:
                missing.append(name)
        if missing:
            types.update(await self.value_types(missing))
        return types

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
        request = fs.GetFeaturesRequest(
            entity_type=entity_type,
            entity_id=entity_id,
            feature_names=c.names(features),
            feature_groups=c.names(groups),
        )
        response = await self._unary(self.store.GetFeatures, request, timeout)
        return c.feature_vector(response.entity_type, response.entity_id, response.features)

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
        output: Output = "records",
        include_status: bool = False,
        include_event_time: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The latest values of many entities: records, a DataFrame or a Table (see `Client`)."""
        request = fs.BatchGetFeaturesRequest(
            entity_type=entity_type,
            entity_ids=list(entity_ids),
            feature_names=c.names(features),
            feature_groups=c.names(groups),
        )
        response = await self._unary(self.store.BatchGetFeatures, request, timeout)
        if output == "records":
            return [c.feature_vector(response.entity_type, e.entity_id, e.features) for e in response.entities]
        rows = [e.features for e in response.entities]
        names = [fv.name for fv in rows[0]] if rows else [*c.names(features)]
        columns = [_frames.Column("entity_id", "STRING", [e.entity_id for e in response.entities])]
        columns += _frames.feature_columns(
            names,
            rows,
            await self._column_types(names, rows),
            include_status=include_status,
            include_event_time=include_event_time,
        )
        return _frames.to_pandas(columns) if output == "pandas" else _frames.to_arrow(columns)

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
        async for fv in self._history_values(entity_type, entity_id, features, start, end, page_size, timeout):
            yield feature_result(fv)

    async def _history_values(
        self,
        entity_type: str,
        entity_id: str,
        features: str | Sequence[str],
        start: Any,
        end: Any,
        page_size: int,
        timeout: float | None,
    ) -> AsyncIterator[fs.FeatureValue]:
        request = c.history_request(entity_type, entity_id, features, start, end, page_size)
        while True:
            page = await self._unary(self.store.GetHistoricalFeatures, request, timeout)
            for fv in page.values:
                yield fv
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

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
        output: Output = "pandas",
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> Any:
        """The history as records, or a DataFrame / Table with one row per event time (see `Client`)."""
        values = [
            fv async for fv in self._history_values(entity_type, entity_id, features, start, end, page_size, timeout)
        ]
        if output == "records":
            return [feature_result(fv) for fv in values]
        wanted = c.names(features)
        times: dict[tuple[int, int], dict[str, fs.FeatureValue]] = {}
        for fv in values:
            times.setdefault((fv.event_time.seconds, fv.event_time.nanos), {})[fv.name] = fv
        empty = fs.FeatureValue()
        rows = [[at.get(name, empty) for name in wanted] for at in times.values()]
        columns = [_frames.Column("event_time", "TIMESTAMP", [s * 1_000_000_000 + n for s, n in times])]
        columns += _frames.feature_columns(wanted, rows, await self._column_types(wanted, rows))
        return _frames.to_pandas(columns) if output == "pandas" else _frames.to_arrow(columns)

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
        _extra_types: dict[str, str | None] | None = None,
    ) -> AsyncIterator[fs.GetTrainingDatasetResponse]:
        """The GetTrainingDataset responses for the entity rows, sent in requests of bounded size."""
        feature_list, group_list = c.names(features), c.names(groups)
        n_features = len(await self._feature_names(feature_list, group_list, timeout))
        chunk_rows = max(1, min(10_000, self.chunk_values // max(1, n_features)))
        extra_types = _extra_types if _extra_types is not None else {}
        c.declare_extra_types(rows, entity_column, timestamp_column, extra_types)
        offset = 0
        for chunk in c.row_chunks(rows, chunk_rows):
            request = fs.GetTrainingDatasetRequest(
                entity_type=entity_type,
                feature_names=feature_list,
                feature_groups=group_list,
                rows=[
                    c.training_row(row, entity_column, timestamp_column, extra_types, f"rows[{offset + i}]")
                    for i, row in enumerate(chunk)
                ],
                max_age=c.duration(max_age),
            )
            offset += len(chunk)
            async for response in self._stream(self.store.GetTrainingDataset, request, timeout):
                yield response

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
        output: Output = "pandas",
        include_status: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Point-in-time correct training data: a DataFrame, a pyarrow Table, or records (see `Client`)."""
        extra_types: dict[str, str | None] = {}
        chunks = self.iter_training_dataset(
            entity_type,
            rows,
            features,
            groups=groups,
            max_age=max_age,
            entity_column=entity_column,
            timestamp_column=timestamp_column,
            timeout=timeout,
            _extra_types=extra_types,
        )
        if output == "records":
            return [c.training_record(e, include_status) async for chunk in chunks for e in chunk.examples]
        names = await self._feature_names(c.names(features), c.names(groups), timeout)
        types: dict[str, str | None] = dict(await self.value_types(names, timeout=timeout, fresh=True))
        merged: list[_frames.Column] | None = None
        async for chunk in chunks:
            cols = c.training_columns(chunk.examples, extra_types, names, types, include_status)
            if merged is None:
                merged = cols
            else:
                for into, col in zip(merged, cols, strict=True):
                    into.values.extend(col.values)
        if merged is None:
            merged = c.training_columns([], extra_types, names, types, include_status)
        return _frames.to_pandas(merged) if output == "pandas" else _frames.to_arrow(merged)

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
        import pyarrow.parquet as pq

        names = await self._feature_names(c.names(features), c.names(groups), timeout)
        types: dict[str, str | None] = dict(await self.value_types(names, timeout=timeout, fresh=True))
        extra_types: dict[str, str | None] = {}
        total = len(rows) if hasattr(rows, "__len__") else -1
        writer: Any = None
        done = 0
        try:
            async for chunk in self.iter_training_dataset(
                entity_type,
                rows,
                features,
                groups=groups,
                max_age=max_age,
                entity_column=entity_column,
                timestamp_column=timestamp_column,
                timeout=timeout,
                _extra_types=extra_types,
            ):
                table = _frames.to_arrow(c.training_columns(chunk.examples, extra_types, names, types, include_status))
                if writer is None:
                    writer = pq.ParquetWriter(str(path), table.schema)
                writer.write_table(table)
                done += table.num_rows
                if progress is not None:
                    progress(done, total)
            if writer is None:
                table = _frames.to_arrow(c.training_columns([], extra_types, names, types, include_status))
                writer = pq.ParquetWriter(str(path), table.schema)
        finally:
            if writer is not None:
                writer.close()
        return done

    # -- writes

    async def _entity_rows(
        self, rows: c.Rows, entity_column: str, event_time_column: str, event_time: Any
    ) -> list[fs.EntityRow]:
        out: list[fs.EntityRow] = []
        for chunk in c.row_chunks(rows, 1000):
            types = await self.value_types(c.feature_columns_of(chunk, entity_column, event_time_column))
            for row in chunk:
                where = f"rows[{len(out)}]"
                out.append(c.entity_row(row, types, entity_column, event_time_column, event_time, where))
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
        entity_rows = await self._entity_rows(rows, entity_column, event_time_column, event_time)
        for batch in c.batched_rows(entity_rows, self.chunk_values, self.max_message_bytes // 2):
            request = fs.WriteFeaturesRequest(entity_type=entity_type, rows=batch)
            response = await self._unary(self.store.WriteFeatures, request, timeout)
            total += c.WriteResult(response.written_values, response.skipped_values, 1)
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
        request = rs.ListFeaturesRequest(entity_type=entity_type, owner=owner, tag=tag, page_size=page_size)
        if category:
            request.category = pb.FeatureCategory.Value(category)
        while True:
            page = await self._unary(self.registry.ListFeatures, request, timeout)
            for feature in page.features:
                yield feature
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def update_feature(
        self,
        feature: pb.Feature | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.Feature:
        """Change a feature (mask and etag rules as in `Client.update_feature`)."""
        message = pb.Feature()
        message.CopyFrom(c.as_feature(feature))
        if etag is not None:
            message.etag = etag
        request = rs.UpdateFeatureRequest(feature=message)
        if update_mask is not None:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(update_mask)))
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
        while True:
            page = await self._unary(self.registry.ListFeatureRevisions, request, timeout)
            for feature in page.features:
                yield feature
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

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
        while True:
            page = await self._unary(self.registry.ListFeatureGroups, request, timeout)
            for group in page.feature_groups:
                yield group
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def update_feature_group(
        self,
        group: pb.FeatureGroup | Mapping[str, Any],
        *,
        update_mask: Sequence[str] | None = None,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> pb.FeatureGroup:
        """Change a feature group (mask and etag rules as in `Client.update_feature`)."""
        message = pb.FeatureGroup()
        message.CopyFrom(c.as_group(group))
        if etag is not None:
            message.etag = etag
        request = rs.UpdateFeatureGroupRequest(feature_group=message)
        if update_mask is not None:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(update_mask)))
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
        entity_rows = await client._entity_rows(rows, entity_column, event_time_column, event_time)
        for batch in c.batched_rows(entity_rows, client.chunk_values, client.max_message_bytes // 2):
            try:
                await self._call.write(fs.PushFeaturesRequest(entity_type=self.entity_type, rows=batch))
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
        self.result = c.WriteResult(response.written_values, response.skipped_values, response.batches)
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
