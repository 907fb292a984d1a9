#!/usr/bin/env python3
"""The Qdrant test server of tenant-migrator.

Qdrant's own storage engine (qdrant-edge-py: segments, WAL, payload indexes, the
real filter evaluation and scroll order) served over Qdrant's own gRPC service
definitions (the generated servicers that the Python qdrant-client package ships),
so that the unmodified Rust qdrant-client talks to it.

One engine shard per collection under DATA_DIR/<collection>/, with the
collection's creation request beside it, so a restarted server keeps its data.
Every update is applied synchronously (before the reply), whatever `wait` says.
With --api-key, every call must carry it in the `api-key` metadata.
Calls outside the set below answer UNIMPLEMENTED (the servicers' default).

Implemented: Qdrant.HealthCheck; Collections.List/Get/Create/Delete/CollectionExists;
Points.Upsert/Get/Scroll/Count/Delete/SetPayload/OverwritePayload/DeletePayload/
CreateFieldIndex, and Points.Query for the nearest points to a dense vector (what
LightRAG's similarity search sends).

With --tls-port, --tls-cert and --tls-key it serves TLS on a second port as well.

Vectors go out the way Qdrant 1.17 and later sends them: in the `vector` oneof of
VectorOutput (dense, sparse, multi_dense). With --wire legacy, the way Qdrant up to
1.16 does: only in the deprecated fields -- `data` (a dense vector, a sparse vector's
values, or a multi-vector's vectors one after the other), `indices` (a sparse
vector's indices) and `vectors_count` (how many vectors a multi-vector holds) -- and
the health check reports version 1.16.3 (qdrant/qdrant#7183: deprecated in 1.16, the
server switched to the oneof in 1.17).

Usage: server.py --port PORT --data DIR [--api-key KEY] [--wire current|legacy]
[--tls-port P --tls-cert F --tls-key F] (prints "READY PORT")
"""
import argparse
import os
import shutil
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc
import qdrant_edge as e
from qdrant_client import grpc as q
from qdrant_client.conversions.conversion import grpc_to_payload, json_to_value

VERSION = "1.20.0"  # what the Rust client checks for compatibility
LEGACY_VERSION = "1.16.3"
# Set from --wire: whether vectors go out in the deprecated fields only.
LEGACY_WIRE = False


class Abort(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def unimplemented(what):
    return Abort(grpc.StatusCode.UNIMPLEMENTED, f"the test server does not implement {what}")


# ---- conversions between Qdrant's gRPC messages and the engine's types ----

def point_id_in(pid):
    kind = pid.WhichOneof("point_id_options")
    if kind == "num":
        return pid.num
    if kind == "uuid":
        return str(uuid.UUID(pid.uuid))
    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty point id")


def point_id_out(pid):
    if isinstance(pid, int):
        return q.PointId(num=pid)
    return q.PointId(uuid=str(pid))


def vector_in(v):
    kind = v.WhichOneof("vector")
    if kind == "dense":
        return list(v.dense.data)
    if kind == "sparse":
        return e.SparseVector(indices=list(v.sparse.indices), values=list(v.sparse.values))
    if kind == "multi_dense":
        return [list(d.data) for d in v.multi_dense.vectors]
    if kind is None and v.HasField("indices"):  # the deprecated sparse form
        return e.SparseVector(indices=list(v.indices.data), values=list(v.data))
    if kind is None:
        return list(v.data)
    raise unimplemented(f"vector kind {kind}")


def vectors_in(vs):
    kind = vs.WhichOneof("vectors_options")
    if kind == "vector":
        return vector_in(vs.vector)
    if kind == "vectors":
        return {name: vector_in(v) for name, v in vs.vectors.vectors.items()}
    return {}


def vector_out(v):
    if isinstance(v, e.SparseVector) or hasattr(v, "indices"):
        if LEGACY_WIRE:
            return q.VectorOutput(data=list(v.values), indices=q.SparseIndices(data=list(v.indices)))
        return q.VectorOutput(sparse=q.SparseVector(indices=list(v.indices), values=list(v.values)))
    if v and isinstance(v[0], list):
        if LEGACY_WIRE:
            return q.VectorOutput(data=[x for d in v for x in d], vectors_count=len(v))
        return q.VectorOutput(multi_dense=q.MultiDenseVector(vectors=[q.DenseVector(data=d) for d in v]))
    if LEGACY_WIRE:
        return q.VectorOutput(data=v)
    return q.VectorOutput(dense=q.DenseVector(data=v))


def vectors_out(v):
    if v is None:
        return None
    if isinstance(v, dict):
        named = {name: vector_out(x) for name, x in v.items()}
        if list(named) == [""]:
            return q.VectorsOutput(vector=named[""])
        return q.VectorsOutput(vectors=q.NamedVectorsOutput(vectors=named))
    return q.VectorsOutput(vector=vector_out(v))


def payload_out(p):
    return {k: json_to_value(v) for k, v in (p or {}).items()}


def match_in(m):
    kind = m.WhichOneof("match_value")
    if kind in ("keyword", "integer", "boolean"):
        return e.MatchValue(getattr(m, kind))
    if kind == "keywords":
        return e.MatchAny(list(m.keywords.strings))
    if kind == "integers":
        return e.MatchAny(list(m.integers.integers))
    if kind == "except_keywords":
        return e.MatchExcept(list(m.except_keywords.strings))
    if kind == "except_integers":
        return e.MatchExcept(list(m.except_integers.integers))
    if kind == "text":
        return e.MatchText(m.text)
    raise unimplemented(f"match {kind}")


def condition_in(c):
    kind = c.WhichOneof("condition_one_of")
    if kind == "field":
        f = c.field
        if f.HasField("match"):
            return e.FieldCondition(key=f.key, match=match_in(f.match))
        if f.HasField("is_empty") and f.is_empty:
            return e.IsEmptyCondition(f.key)
        if f.HasField("is_null") and f.is_null:
            return e.IsNullCondition(f.key)
        if f.HasField("range"):
            r = f.range
            kw = {k: getattr(r, k) for k in ("lt", "gt", "gte", "lte") if r.HasField(k)}
            return e.FieldCondition(key=f.key, range=e.RangeFloat(**kw))
        raise unimplemented(f"field condition on {f.key!r}")
    if kind == "is_empty":
        return e.IsEmptyCondition(c.is_empty.key)
    if kind == "is_null":
        return e.IsNullCondition(c.is_null.key)
    if kind == "has_id":
        return e.HasIdCondition({point_id_in(p) for p in c.has_id.has_id})
    if kind == "filter":
        return filter_in(c.filter)
    raise unimplemented(f"condition {kind}")


def filter_in(f):
    if f is None or not (f.must or f.should or f.must_not):
        return None
    conv = lambda cs: [condition_in(c) for c in cs] or None  # noqa: E731
    return e.Filter(must=conv(f.must), should=conv(f.should), must_not=conv(f.must_not))


def with_payload_in(sel):
    kind = sel.WhichOneof("selector_options")
    if kind == "enable":
        return sel.enable
    if kind == "include":
        return list(sel.include.fields)
    if kind == "exclude":
        return e.PayloadSelector(exclude=list(sel.exclude.fields))
    return False


def with_vectors_in(req):
    if not req.HasField("with_vectors"):
        return False
    sel = req.with_vectors
    kind = sel.WhichOneof("selector_options")
    if kind == "enable":
        return sel.enable
    if kind == "include":
        return list(sel.include.names)
    return False


DISTANCE = {1: e.Distance.Cosine, 2: e.Distance.Euclid, 3: e.Distance.Dot, 4: e.Distance.Manhattan}
SCHEMA = {
    0: e.PayloadSchemaType.Keyword, 1: e.PayloadSchemaType.Integer, 2: e.PayloadSchemaType.Float,
    3: e.PayloadSchemaType.Geo, 4: e.PayloadSchemaType.Text, 5: e.PayloadSchemaType.Bool,
    6: e.PayloadSchemaType.Datetime, 7: e.PayloadSchemaType.Uuid,
}


def edge_config(create):
    def params(p):
        multi = None
        if p.HasField("multivector_config"):  # MaxSim is Qdrant's only comparator
            multi = e.MultiVectorConfig(comparator=e.MultiVectorComparator.MaxSim)
        return e.EdgeVectorParams(
            size=p.size, distance=DISTANCE.get(p.distance, e.Distance.Cosine), multivector_config=multi
        )

    vectors = None
    if create.HasField("vectors_config"):
        vc = create.vectors_config
        if vc.WhichOneof("config") == "params":
            vectors = params(vc.params)
        elif vc.WhichOneof("config") == "params_map":
            vectors = {name: params(p) for name, p in vc.params_map.map.items()}
    sparse = None
    if create.HasField("sparse_vectors_config"):
        sparse = {name: e.EdgeSparseVectorParams() for name in create.sparse_vectors_config.map}
    return e.EdgeConfig(vectors=vectors, sparse_vectors=sparse)


class Collection:
    def __init__(self, name, path, create):
        self.name, self.path, self.create = name, path, create
        self.lock = threading.Lock()
        self.indexes = {}
        shard_dir = os.path.join(path, "shard")
        if os.path.isdir(shard_dir) and os.listdir(shard_dir):
            self.shard = e.EdgeShard.load(shard_dir)
        else:
            self.shard = e.EdgeShard.create(shard_dir, edge_config(create))

    def update(self, op):
        with self.lock:
            self.shard.update(op)


class Store:
    def __init__(self, data):
        self.data = data
        self.lock = threading.Lock()
        self.collections = {}
        os.makedirs(data, exist_ok=True)
        for name in sorted(os.listdir(data)):
            req = os.path.join(data, name, "collection.pb")
            if os.path.exists(req):
                with open(req, "rb") as f:
                    self.collections[name] = Collection(name, os.path.join(data, name), q.CreateCollection.FromString(f.read()))

    def get(self, name):
        c = self.collections.get(name)
        if c is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"Not found: Collection `{name}` doesn't exist!")
        return c

    def create(self, req):
        with self.lock:
            if req.collection_name in self.collections:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"Collection `{req.collection_name}` already exists!")
            path = os.path.join(self.data, req.collection_name)
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "collection.pb"), "wb") as f:
                f.write(req.SerializeToString())
            self.collections[req.collection_name] = Collection(req.collection_name, path, req)

    def delete(self, name):
        with self.lock:
            c = self.collections.pop(name, None)
            if c is None:
                return False
            c.shard.close()
            shutil.rmtree(c.path, ignore_errors=True)
            return True


# Point writes, for the hang hook below.
WRITES = {"Upsert", "Delete", "SetPayload", "OverwritePayload", "DeletePayload"}
# A file holding a number N: the N-th point write from now on is applied and then never
# answered (a server that dies between its write and its reply, to the client). Fault
# injection for tests; the file is removed when the hang begins.
HANG_FILE = None
HANG_LOCK = threading.Lock()


def hang_after_write():
    if HANG_FILE is None:
        return
    with HANG_LOCK:
        try:
            with open(HANG_FILE) as f:
                n = int(f.read().strip() or "0")
        except (OSError, ValueError):
            return
        if n > 1:
            with open(HANG_FILE, "w") as f:
                f.write(str(n - 1))
            return
        os.remove(HANG_FILE)
    threading.Event().wait()


# A file naming a call by its servicer method ("Points.Delete"): the next such call waits, before it touches any
# collection, until the test lets it go — a client's write can then land between what
# the migration read and its write. The file is renamed to FILE.paused when the call
# starts waiting, and the call goes on once FILE.paused is removed. Fault injection
# for tests.
PAUSE_FILE = None


def pause_before(name):
    if PAUSE_FILE is None:
        return
    with HANG_LOCK:
        try:
            with open(PAUSE_FILE) as f:
                if f.read().strip() != name:
                    return
            os.rename(PAUSE_FILE, PAUSE_FILE + ".paused")
        except OSError:
            return
    while os.path.exists(PAUSE_FILE + ".paused"):
        time.sleep(0.01)


def guarded(fn):
    """Checks the API key, turns Abort into a gRPC status, times the call."""

    def wrapper(self, request, context):
        if self.api_key is not None:
            meta = dict(context.invocation_metadata())
            if meta.get("api-key") != self.api_key:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "Invalid api-key")
        pause_before(fn.__qualname__)
        start = time.monotonic()
        try:
            reply = fn(self, request, context, start)
        except Abort as a:
            context.abort(a.code, a.message)
        except (ValueError, RuntimeError, TypeError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if fn.__name__ in WRITES:
            hang_after_write()
        return reply

    wrapper.__name__ = fn.__name__
    return wrapper


def elapsed(start):
    return time.monotonic() - start


def done(start):
    return q.PointsOperationResponse(result=q.UpdateResult(operation_id=0, status=q.UpdateStatus.Completed), time=elapsed(start))


class Health(q.QdrantServicer):
    def __init__(self, api_key):
        self.api_key = api_key

    @guarded
    def HealthCheck(self, request, context, start):
        return q.HealthCheckReply(title="qdrant-edge test server", version=LEGACY_VERSION if LEGACY_WIRE else VERSION)


class Collections(q.CollectionsServicer):
    def __init__(self, store, api_key):
        self.store, self.api_key = store, api_key

    @guarded
    def List(self, request, context, start):
        return q.ListCollectionsResponse(
            collections=[q.CollectionDescription(name=n) for n in sorted(self.store.collections)], time=elapsed(start)
        )

    @guarded
    def CollectionExists(self, request, context, start):
        return q.CollectionExistsResponse(
            result=q.CollectionExists(exists=request.collection_name in self.store.collections), time=elapsed(start)
        )

    @guarded
    def Create(self, request, context, start):
        self.store.create(request)
        return q.CollectionOperationResponse(result=True, time=elapsed(start))

    @guarded
    def Delete(self, request, context, start):
        return q.CollectionOperationResponse(result=self.store.delete(request.collection_name), time=elapsed(start))

    @guarded
    def Get(self, request, context, start):
        c = self.store.get(request.collection_name)
        info = c.shard.info()
        cr = c.create
        params = q.CollectionParams(shard_number=1, on_disk_payload=False)
        if cr.HasField("vectors_config"):
            params.vectors_config.CopyFrom(cr.vectors_config)
        if cr.HasField("sparse_vectors_config"):
            params.sparse_vectors_config.CopyFrom(cr.sparse_vectors_config)
        schema = {name: q.PayloadSchemaInfo(data_type=t) for name, t in c.indexes.items()}
        return q.GetCollectionInfoResponse(
            result=q.CollectionInfo(
                status=q.CollectionStatus.Green,
                optimizer_status=q.OptimizerStatus(ok=True),
                segments_count=info.segments_count,
                points_count=info.points_count,
                indexed_vectors_count=info.indexed_vectors_count,
                # Qdrant's defaults, so that clients converting the whole config accept it.
                config=q.CollectionConfig(
                    params=params,
                    hnsw_config=q.HnswConfigDiff(m=16, ef_construct=100, full_scan_threshold=10000, on_disk=False),
                    optimizer_config=q.OptimizersConfigDiff(
                        deleted_threshold=0.2, vacuum_min_vector_number=1000, default_segment_number=0,
                        flush_interval_sec=5,
                    ),
                    wal_config=q.WalConfigDiff(wal_capacity_mb=32, wal_segments_ahead=0),
                ),
                payload_schema=schema,
            ),
            time=elapsed(start),
        )


def record_out(r, with_vectors):
    # Each read of r.vector converts the whole vector again: read it once, and build the
    # message in one call (CopyFrom would copy every vector a second time).
    vector = r.vector if with_vectors else None
    vectors = vectors_out(vector) if vector is not None else None
    return q.RetrievedPoint(id=point_id_out(r.id), payload=payload_out(r.payload), vectors=vectors)


def selector_ids_or_filter(sel):
    kind = sel.WhichOneof("points_selector_one_of")
    if kind == "points":
        return [point_id_in(p) for p in sel.points.ids], None
    if kind == "filter":
        return None, filter_in(sel.filter) or e.Filter(must=[])
    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty points selector")


class Points(q.PointsServicer):
    def __init__(self, store, api_key):
        self.store, self.api_key = store, api_key

    @guarded
    def Upsert(self, request, context, start):
        c = self.store.get(request.collection_name)
        points = [
            e.Point(id=point_id_in(p.id), vector=vectors_in(p.vectors), payload=grpc_to_payload(p.payload))
            for p in request.points
        ]
        c.update(e.UpdateOperation.upsert_points(points))
        return done(start)

    @guarded
    def Delete(self, request, context, start):
        c = self.store.get(request.collection_name)
        ids, flt = selector_ids_or_filter(request.points)
        op = e.UpdateOperation.delete_points(ids) if ids is not None else e.UpdateOperation.delete_points_by_filter(flt)
        c.update(op)
        return done(start)

    @guarded
    def Get(self, request, context, start):
        c = self.store.get(request.collection_name)
        wv = with_vectors_in(request)
        records = c.shard.retrieve([point_id_in(p) for p in request.ids], with_payload_in(request.with_payload), wv)
        return q.GetResponse(result=[record_out(r, wv) for r in records], time=elapsed(start))

    @guarded
    def Scroll(self, request, context, start):
        if request.HasField("order_by"):
            raise unimplemented("scroll with order_by")
        c = self.store.get(request.collection_name)
        wv = with_vectors_in(request)
        limit = request.limit if request.HasField("limit") else 10
        offset = point_id_in(request.offset) if request.HasField("offset") else None
        records, next_offset = c.shard.scroll(
            e.ScrollRequest(
                offset=offset,
                limit=limit,
                filter=filter_in(request.filter) if request.HasField("filter") else None,
                with_payload=with_payload_in(request.with_payload),
                with_vector=wv,
            )
        )
        resp = q.ScrollResponse(result=[record_out(r, wv) for r in records], time=elapsed(start))
        if next_offset is not None:
            resp.next_page_offset.CopyFrom(point_id_out(next_offset))
        return resp

    @guarded
    def Query(self, request, context, start):
        if request.prefetch or not request.HasField("query") or request.query.WhichOneof("variant") != "nearest" \
                or request.query.nearest.WhichOneof("variant") != "dense":
            raise unimplemented("queries other than the nearest points to a dense vector")
        c = self.store.get(request.collection_name)
        wv = with_vectors_in(request)
        hits = c.shard.query(e.QueryRequest(
            limit=request.limit if request.HasField("limit") else 10,
            offset=request.offset if request.HasField("offset") else None,
            query=e.Query.Nearest(list(request.query.nearest.dense.data),
                                  using=request.using if request.HasField("using") else None),
            filter=filter_in(request.filter) if request.HasField("filter") else None,
            with_payload=with_payload_in(request.with_payload) if request.HasField("with_payload") else False,
            with_vector=wv,
            score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
        ))
        return q.QueryResponse(result=[
            q.ScoredPoint(id=point_id_out(h.id), payload=payload_out(h.payload), score=h.score, version=h.version,
                          vectors=vectors_out(h.vector) if wv and h.vector is not None else None)
            for h in hits
        ], time=elapsed(start))

    @guarded
    def Count(self, request, context, start):
        c = self.store.get(request.collection_name)
        flt = filter_in(request.filter) if request.HasField("filter") else None
        n = c.shard.count(e.CountRequest(exact=True, filter=flt))
        return q.CountResponse(result=q.CountResult(count=n), time=elapsed(start))

    def _payload_op(self, request, by_ids, by_filter, start):
        c = self.store.get(request.collection_name)
        if not request.HasField("points_selector"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "points_selector is required")
        ids, flt = selector_ids_or_filter(request.points_selector)
        payload = grpc_to_payload(request.payload)
        key = request.key if request.HasField("key") else None
        c.update(by_ids(ids, payload, key) if ids is not None else by_filter(flt, payload, key))
        return done(start)

    @guarded
    def SetPayload(self, request, context, start):
        return self._payload_op(request, e.UpdateOperation.set_payload, e.UpdateOperation.set_payload_by_filter, start)

    @guarded
    def OverwritePayload(self, request, context, start):
        return self._payload_op(
            request, e.UpdateOperation.overwrite_payload, e.UpdateOperation.overwrite_payload_by_filter, start
        )

    @guarded
    def DeletePayload(self, request, context, start):
        c = self.store.get(request.collection_name)
        ids, flt = selector_ids_or_filter(request.points_selector)
        keys = list(request.keys)
        op = (
            e.UpdateOperation.delete_payload(ids, keys)
            if ids is not None
            else e.UpdateOperation.delete_payload_by_filter(flt, keys)
        )
        c.update(op)
        return done(start)

    @guarded
    def CreateFieldIndex(self, request, context, start):
        c = self.store.get(request.collection_name)
        field_type = request.field_type if request.HasField("field_type") else 0
        schema = SCHEMA.get(field_type)
        if schema is None:
            raise unimplemented(f"field index type {field_type}")
        c.update(e.UpdateOperation.create_field_index(request.field_name, schema))
        # FieldType and PayloadSchemaType share their numbering.
        c.indexes[request.field_name] = field_type + 1
        return done(start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--wire", choices=["current", "legacy"], default="current")
    ap.add_argument("--tls-port", type=int)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--hang-file", help="fault injection: see HANG_FILE")
    ap.add_argument("--pause-file", help="fault injection: see PAUSE_FILE")
    a = ap.parse_args()
    global LEGACY_WIRE, HANG_FILE, PAUSE_FILE
    LEGACY_WIRE = a.wire == "legacy"
    HANG_FILE = a.hang_file
    PAUSE_FILE = a.pause_file
    store = Store(a.data)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)],
    )
    q.add_QdrantServicer_to_server(Health(a.api_key), server)
    q.add_CollectionsServicer_to_server(Collections(store, a.api_key), server)
    q.add_PointsServicer_to_server(Points(store, a.api_key), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    if a.tls_port:
        with open(a.tls_key, "rb") as k, open(a.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(f"127.0.0.1:{a.tls_port}", creds)
    server.start()
    print(f"READY {a.port}", flush=True)
    # Stop when the parent closes stdin (the test process died) or on SIGTERM.
    try:
        while sys.stdin.read(1):
            pass
    except KeyboardInterrupt:
        pass
    for c in store.collections.values():
        c.shard.flush()
    server.stop(0)


if __name__ == "__main__":
    main()
