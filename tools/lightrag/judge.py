#!/usr/bin/env python3
"""Judges a tenant migration with LightRAG's own storage classes (lightrag-hku).

  judge.py write --workspace W [connection flags]
      writes a small deterministic tenant under workspace W through RedisKVStorage,
      RedisDocStatusStorage, QdrantVectorDBStorage and MemgraphStorage (or Neo4JStorage).
  judge.py check --workspace W --expect full|empty [connection flags]
      reads it back through the same classes under W: `full` = every record is there,
      exactly; `empty` = nothing of it is found. Exit 0 and one summary line, or exit 1
      and the differences (grouped; the first three of each group).

Connection flags (a store is judged only when its flag is given):
  --redis-url redis://host:port/db
  --qdrant-grpc host:port [--qdrant-api-key K]    (gRPC only; key also from QDRANT_API_KEY)
  --bolt-uri bolt://host:port [--bolt-user U --bolt-password P] [--bolt-database D]
        [--graph memgraph|neo4j]                  (password also from MEMGRAPH_PASSWORD)
  --model-name NAME --dim N   embedding model name and size: the Qdrant collections are
        lightrag_vdb_{chunks,entities,relationships}_{name}_{N}d (`--model-name ''`:
        lightrag_vdb_{ns}); the vectors come from a fake, hash-based embedding.

The content does not depend on W, so a tenant written under A and migrated to B checks
`full` under B and `empty` under A. `check` is read-only: it skips the Qdrant and graph
storages' initialize() (which would create collections, payload and label indexes, or
migrate legacy collections) unless --init is given, and it stops RedisDocStatusStorage
from rebuilding a missing scheduling index (reported as a difference instead).
"""
import argparse
import asyncio
import hashlib
import logging
import os
import re
import sys
import warnings

import numpy as np

from lightrag.base import CURSOR_END, CURSOR_START, DocStatus
from lightrag.kg.memgraph_impl import MemgraphStorage
from lightrag.kg.neo4j_impl import Neo4JStorage
from lightrag.kg.qdrant_impl import QdrantVectorDBStorage, workspace_filter_condition
from lightrag.kg.redis_impl import RedisDocStatusStorage, RedisKVStorage
from lightrag.kg.shared_storage import finalize_share_data, get_namespace_lock, initialize_share_data
from lightrag.utils import (EmbeddingFunc, compute_args_hash, compute_mdhash_id, generate_cache_key,
                            logger, make_relation_chunk_key)
from neo4j import AsyncGraphDatabase
from qdrant_client import QdrantClient, models

# ---- the deterministic tenant (nothing here depends on the workspace) ----

N_DOCS, N_ENTS, N_RELS = 20, 30, 40  # two chunks per document: 40 chunks
T0 = 1735689600  # 2025-01-01T00:00:00Z: created_at of nodes and edges (LightRAG stamps the rest)
STATUSES = [DocStatus.PROCESSED] * 8 + [DocStatus.PENDING] * 5 + [DocStatus.PROCESSING] * 3 + \
    [DocStatus.FAILED] * 2 + [DocStatus.PARSING, DocStatus.ANALYZING]
ODD_NAMES = ["Zoë & Co", "O'Brien", 'The "Quoted" One', "Back`tick", "東京 Tower"]
ENTS = [f"Entity {i:02d}" for i in range(N_ENTS - len(ODD_NAMES))] + ODD_NAMES
# a ring over entities 0..28, then 11 chords (i, i+3); entity 29 stays isolated (degree 0)
RELS = [(ENTS[i], ENTS[(i + 1) % 29]) for i in range(29)] + [(ENTS[i], ENTS[(i + 3) % 29]) for i in range(11)]
KV_NAMESPACES = ["full_docs", "text_chunks", "llm_response_cache", "full_entities", "full_relations",
                 "entity_chunks", "relation_chunks"]
META = {"chunks": {"full_doc_id", "content", "file_path"},
        "entities": {"entity_name", "source_id", "content", "file_path"},
        "relationships": {"src_id", "tgt_id", "source_id", "content", "file_path"}}


def build():
    """Returns {kv: {ns: {id: record}}, status: {id: row}, vdb: {ns: {id: data}}, nodes, edges}."""
    kv = {ns: {} for ns in KV_NAMESPACES}
    status, vdb = {}, {ns: {} for ns in META}
    nodes, edges = {}, {}
    chunk_of_ent, chunk_of_rel = {}, {}
    for i in range(N_DOCS):
        fname = f"judge_doc_{i:02d}.txt"
        ents = [ENTS[(2 * i + k) % N_ENTS] for k in range(3)]
        chunks = [f"Chunk {2 * i + j} of document {i:02d}: {ents[j]} meets {ents[j + 1]} near lake {i * j}."
                  for j in range(2)]
        content = "\n\n".join(chunks)
        doc_id = compute_mdhash_id(content, prefix="doc-")
        chunk_ids = [compute_mdhash_id(c, prefix="chunk-") for c in chunks]
        kv["full_docs"][doc_id] = {"content": content, "file_path": fname}
        for j, (cid, text) in enumerate(zip(chunk_ids, chunks)):
            cache_ids = []
            if j == 0 and i < 10:  # ten extraction cache entries, each referenced by its chunk
                cache_id = generate_cache_key("default", "extract", compute_args_hash(text))
                kv["llm_response_cache"][cache_id] = {
                    "return": f"(entity<|>{ents[0]}<|>thing<|>judge {i})", "cache_type": "extract",
                    "chunk_id": cid, "original_prompt": text, "queryparam": None}
                cache_ids.append(cache_id)
            kv["text_chunks"][cid] = {"tokens": len(text.split()), "content": text, "chunk_order_index": j,
                                      "full_doc_id": doc_id, "file_path": fname, "llm_cache_list": cache_ids}
            vdb["chunks"][cid] = {"content": text, "full_doc_id": doc_id, "file_path": fname}
            for name in ents[j:j + 2]:
                chunk_of_ent.setdefault(name, (cid, fname))
        st = STATUSES[i]
        done = st == DocStatus.PROCESSED
        status[doc_id] = {
            "status": st.value, "content_summary": content[:100], "content_length": len(content),
            "file_path": fname, "created_at": f"2025-01-01T00:00:{i:02d}+00:00",
            "updated_at": f"2025-01-02T00:00:{i:02d}+00:00", "track_id": "insert_20250101_000000_judge",
            "chunks_count": 2 if done else 0, "chunks_list": chunk_ids if done else [],
            "error_msg": "judge: simulated failure" if st == DocStatus.FAILED else None,
            "metadata": {"judge": True}, "content_hash": hashlib.md5(content.encode()).hexdigest()}
        kv["full_entities"][doc_id] = {"entity_names": ents, "count": len(ents)}
        pairs = [[a, b] for a, b in RELS if a in ents and b in ents]
        kv["full_relations"][doc_id] = {"relation_pairs": pairs, "count": len(pairs)}
    for k, name in enumerate(ENTS):
        cid, fname = chunk_of_ent.get(name, (compute_mdhash_id("orphan", prefix="chunk-"), "unknown_source"))
        desc = f"{name} is judge entity number {k}."
        nodes[name] = {"entity_id": name, "entity_type": ["person", "place", "thing"][k % 3],
                       "description": desc, "source_id": cid, "file_path": fname, "created_at": T0 + k}
        vdb["entities"][compute_mdhash_id(name, prefix="ent-")] = {
            "entity_name": name, "content": f"{name}\n{desc}", "source_id": cid, "file_path": fname}
        kv["entity_chunks"][name] = {"chunk_ids": [cid], "count": 1}
        chunk_of_rel[name] = (cid, fname)
    for k, (src, tgt) in enumerate(RELS):
        cid, fname = chunk_of_rel[src]
        desc, kw = f"{src} and {tgt} are related ({k}).", f"judge,link{k % 4}"
        edges[(src, tgt)] = {"weight": 1.0 + k / 8, "description": desc, "keywords": kw, "source_id": cid,
                             "file_path": fname, "created_at": T0 + k}
        vdb["relationships"][compute_mdhash_id(src + tgt, prefix="rel-")] = {
            "src_id": src, "tgt_id": tgt, "content": f"{kw}\t{src}\n{tgt}\n{desc}", "source_id": cid,
            "file_path": fname}
        kv["relation_chunks"][make_relation_chunk_key(src, tgt)] = {"chunk_ids": [cid], "count": 1}
    return {"kv": kv, "status": status, "vdb": vdb, "nodes": nodes, "edges": edges}


def fake_embedding(dim):
    """Hash-based unit vectors: the same text always gets the same vector."""
    def one(text):
        raw = b"".join(hashlib.sha256(f"{n}:{text}".encode()).digest() for n in range(dim // 32 + 1))
        v = np.frombuffer(raw[:dim], dtype=np.uint8).astype(np.float32) - 127.5
        return v / np.linalg.norm(v)

    async def embed(texts, **_):
        return np.stack([one(t) for t in texts])
    return embed


# ---- the storages ----

class Judge:
    def __init__(self, a):
        self.a, self.diffs, self.checked = a, [], []
        self.emb = EmbeddingFunc(embedding_dim=a.dim, func=fake_embedding(a.dim), model_name=a.model_name or None)
        self.cfg = {"embedding_batch_num": 32, "max_graph_nodes": 1000,
                    "vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": 0.2}}
        self.exp = build()

    def diff(self, what, got=None, want=None):
        def short(v):
            r = repr(v)
            return r if len(r) <= 160 else r[:150] + " …" + r[-8:]
        self.diffs.append(what if got is None and want is None else f"{what}: got {short(got)}, want {short(want)}")

    # -- Redis --
    async def redis(self, write):
        full = self.a.expect == "full"
        ws = self.a.workspace
        for ns in KV_NAMESPACES:
            st = RedisKVStorage(namespace=ns, workspace=ws, global_config=self.cfg, embedding_func=self.emb)
            await st.initialize()
            try:
                want = self.exp["kv"][ns]
                if write:
                    await st.upsert({k: dict(v) for k, v in want.items()})
                    await st.index_done_callback()
                    continue
                ids = sorted(want)
                got = await st.get_by_ids(ids)
                for i, g in zip(ids, got):
                    self.cmp_kv(f"redis {ns}[{i}]", g, want[i] if full else None, i)
                self.cmp_kv(f"redis {ns}[{ids[0]}] (get_by_id)", await st.get_by_id(ids[0]),
                            want[ids[0]] if full else None, ids[0])
                if await st.is_empty() == full:
                    self.diff(f"redis {ns}: is_empty() is {not full}")
            finally:
                await st.finalize()
        st = RedisDocStatusStorage(namespace="doc_status", workspace=ws, global_config=self.cfg,
                                   embedding_func=None)
        rebuilt = []
        if not write:  # read-only: report a missing scheduling index instead of rebuilding it
            async def no_rebuild(*_a, **_k):
                rebuilt.append(True)
            st._do_rebuild = no_rebuild
        await st.initialize()
        try:
            want = self.exp["status"]
            if write:
                await st.upsert({k: dict(v) for k, v in want.items()})
                await st.index_done_callback()
                return
            if rebuilt:
                self.diff("redis doc_status: the scheduling index (…_doc_status__sched:*) is missing "
                          "though rows exist; LightRAG would rebuild it at startup")
            ids = sorted(want)
            for i, g in zip(ids, await st.get_by_ids(ids)):
                if g != (want[i] if full else None):
                    self.diff(f"redis doc_status[{i}]", g, want[i] if full else None)
            counts = {s.value: 0 for s in DocStatus}
            for s in STATUSES:
                counts[s.value] += full
            if (got := await st.get_status_counts()) != counts:
                self.diff("redis doc_status get_status_counts", got, counts)
            if (got := (await st.get_all_status_counts())["all"]) != N_DOCS * full:
                self.diff("redis doc_status get_all_status_counts()['all']", got, N_DOCS * full)
            for s in DocStatus:
                wanted = sorted(i for i, r in want.items() if r["status"] == s.value and full)
                if (got := sorted(await st.get_docs_by_statuses([s]))) != wanted:
                    self.diff(f"redis doc_status get_docs_by_statuses([{s.value}])", got, wanted)
                if (n := await st.count_docs_by_statuses([s])) != len(wanted):
                    self.diff(f"redis doc_status count_docs_by_statuses([{s.value}]) (sched index)", n, len(wanted))
            paged, pos = [], CURSOR_START
            while pos is not CURSOR_END:
                page = await st.get_docs_by_statuses_page(list(DocStatus), limit=7, position=pos)
                paged += list(page.docs)
                pos = page.next_position
            wanted = sorted(want, key=lambda i: want[i]["created_at"]) if full else []
            if paged != wanted:
                self.diff("redis doc_status get_docs_by_statuses_page (sched index, created_at order)", paged, wanted)
            for i in ids[:5]:
                got = await st.get_doc_by_file_basename(want[i]["file_path"])
                if (got[0] if got else None) != (i if full else None):
                    self.diff(f"redis doc_status get_doc_by_file_basename({want[i]['file_path']!r}) (sched index)",
                              got and got[0], i if full else None)
        finally:
            await st.finalize()

    def cmp_kv(self, what, got, want, key):
        if want is None:
            if got is not None:
                self.diff(what, got, None)
            return
        if got is None:
            return self.diff(what, None, "a record")
        times = [got.get("create_time"), got.get("update_time")]
        if not all(isinstance(t, int) and t > 0 for t in times):
            self.diff(f"{what} create_time/update_time", times, "two positive ints")
        rest = {k: v for k, v in got.items() if k not in ("create_time", "update_time")}
        if rest != {**want, "_id": key}:
            self.diff(what, rest, {**want, "_id": key})

    # -- Qdrant --
    def qdrant_client(self):
        host, _, port = self.a.qdrant_grpc.rpartition(":")
        return QdrantClient(host=host or "localhost", grpc_port=int(port), prefer_grpc=True, https=False,
                            api_key=self.a.qdrant_api_key or None, check_compatibility=False, timeout=30)

    async def qdrant(self, write):
        full = self.a.expect == "full"
        for ns, meta in META.items():
            st = QdrantVectorDBStorage(namespace=ns, global_config=self.cfg, embedding_func=self.emb,
                                       workspace=self.a.workspace, meta_fields=meta)
            # LightRAG's initialize() builds a REST client from QDRANT_URL only when _client is
            # None; we hand it a gRPC one instead (the test server has no REST port).
            st._client = self.qdrant_client()
            if write or self.a.init:
                await st.initialize()
            else:  # read-only: what initialize() sets besides collection set-up
                st._flush_lock = get_namespace_lock(namespace=st.final_namespace, workspace=st.effective_workspace)
            try:
                want = self.exp["vdb"][ns]
                coll = st.final_namespace
                if write:
                    await st.upsert({k: dict(v) for k, v in want.items()})
                    await st.index_done_callback()
                    continue
                if not st._client.collection_exists(coll):
                    if full:
                        self.diff(f"qdrant {coll}: collection does not exist")
                    continue
                n = st._client.count(coll, count_filter=models.Filter(
                    must=[workspace_filter_condition(st.effective_workspace)]), exact=True).count
                if n != len(want) * full:
                    self.diff(f"qdrant {coll}: points with workspace_id={st.effective_workspace!r}", n, len(want) * full)
                ids = sorted(want)
                for i, g in zip(ids, await st.get_by_ids(ids)):
                    self.cmp_payload(f"qdrant {coll}[{i}]", g, want[i] if full else None, i)
                self.cmp_payload(f"qdrant {coll}[{ids[0]}] (get_by_id)", await st.get_by_id(ids[0]),
                                 want[ids[0]] if full else None, ids[0])
                vecs = await st.get_vectors_by_ids(ids)
                ref = await self.emb([want[i]["content"] for i in ids])
                for i, r in zip(ids, ref):
                    v = vecs.get(i)
                    if full and (v is None or not np.allclose(v, r, atol=1e-5)):
                        self.diff(f"qdrant {coll}[{i}] vector differs from the embedding of its content")
                    if not full and v is not None:
                        self.diff(f"qdrant {coll}[{i}] vector still found")
                for i in ids[:: max(1, len(ids) // 5)]:  # similarity: a known text finds its own point first
                    hits = await st.query(want[i]["content"], top_k=3)
                    top = [h.get("id") for h in hits]
                    if (top[:1] if full else top) != ([i] if full else []):
                        self.diff(f"qdrant {coll} query(content of {i}) ids", top, [i] if full else [])
                    if any(h.get("workspace_id") != st.effective_workspace for h in hits):
                        self.diff(f"qdrant {coll} query returned another workspace's points")
            finally:
                await st.finalize()

    def cmp_payload(self, what, got, want, key):
        if want is None:
            if got is not None:
                self.diff(what, got, None)
            return
        if got is None:
            return self.diff(what, None, "a point")
        if not isinstance(got.get("created_at"), int):
            self.diff(f"{what} created_at", got.get("created_at"), "an int")
        rest = {k: v for k, v in got.items() if k != "created_at"}
        want = {**want, "id": key, "workspace_id": self.a.workspace}
        if rest != want:
            self.diff(what, rest, want)

    # -- graph --
    async def graph(self, write):
        full = self.a.expect == "full"
        memgraph = self.a.graph == "memgraph"
        cls = MemgraphStorage if memgraph else Neo4JStorage
        st = cls(namespace="chunk_entity_relation", global_config=self.cfg, embedding_func=self.emb,
                 workspace=self.a.workspace)
        if write or self.a.init:
            await st.initialize()
        else:  # read-only: the driver initialize() would open, without its CREATE INDEX
            st._driver = AsyncGraphDatabase.driver(self.a.bolt_uri, auth=(self.a.bolt_user, self.a.bolt_password))
            st._DATABASE = self.a.bolt_database
        try:
            nodes, edges = self.exp["nodes"], self.exp["edges"]
            if write:
                for name, props in nodes.items():
                    await st.upsert_node(name, dict(props))
                for (s, t), props in edges.items():
                    await st.upsert_edge(s, t, dict(props))
                await st.index_done_callback()
                return
            label = f"graph label `{st._get_workspace_label()}`"
            if (got := await st.get_all_labels()) != (sorted(nodes) if full else []):
                self.diff(f"{label} get_all_labels", got, sorted(nodes) if full else [])
            if (n := len(await st.get_all_nodes())) != len(nodes) * full:
                self.diff(f"{label} get_all_nodes count", n, len(nodes) * full)
            degree = {name: 0 for name in nodes}
            for s, t in edges:
                degree[s] += 1
                degree[t] += 1
            for name, props in nodes.items():
                if await st.has_node(name) != full:
                    self.diff(f"{label} has_node({name!r}) is {not full}")
                if (got := await st.get_node(name)) != (props if full else None):
                    self.diff(f"{label} get_node({name!r})", got, props if full else None)
                if (d := await st.node_degree(name)) != degree[name] * full:
                    self.diff(f"{label} node_degree({name!r})", d, degree[name] * full)
                # MemgraphStorage keeps each edge's direction; Neo4JStorage answers (name, other)
                ends = [(s, t) if memgraph else (name, t if s == name else s) for s, t in edges if name in (s, t)]
                got = await st.get_node_edges(name)
                if (sorted(got) if got is not None else None) != (sorted(ends) if full else None):
                    self.diff(f"{label} get_node_edges({name!r})", got, sorted(ends) if full else None)
            for (s, t), props in edges.items():
                for a, b in ((s, t), (t, s)):
                    if await st.has_edge(a, b) != full:
                        self.diff(f"{label} has_edge({a!r}, {b!r}) is {not full}")
                if (got := await st.get_edge(s, t)) != (props if full else None):
                    self.diff(f"{label} get_edge({s!r}, {t!r})", got, props if full else None)
            if await st.has_edge(ENTS[0], ENTS[15]):
                self.diff(f"{label} has_edge({ENTS[0]!r}, {ENTS[15]!r}): an edge that was never written")
        finally:
            await st.finalize()


async def run(a):
    j = Judge(a)
    write = a.cmd == "write"
    initialize_share_data(workers=1)
    try:
        for store, flag in (("redis", a.redis_url), ("qdrant", a.qdrant_grpc), ("graph", a.bolt_uri)):
            if flag:
                j.checked.append(store)
                try:
                    await getattr(j, store)(write)
                except Exception as e:  # a failing call is a finding, not a crash
                    detail = e.details() if hasattr(e, "details") and callable(e.details) else e
                    j.diffs.append(f"{store}: {type(e).__name__}: {detail}")
    finally:
        finalize_share_data()
    return j


class ErrorLog(logging.Handler):
    """Some LightRAG reads log an error and answer None/[]/0 instead of raising: fail on those."""
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["write", "check"])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--expect", choices=["full", "empty"], default="full")
    ap.add_argument("--redis-url")
    ap.add_argument("--qdrant-grpc", metavar="HOST:PORT")
    ap.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"))
    ap.add_argument("--bolt-uri")
    ap.add_argument("--bolt-user", default=os.environ.get("MEMGRAPH_USER", ""))
    ap.add_argument("--bolt-password", default=os.environ.get("MEMGRAPH_PASSWORD", ""))
    ap.add_argument("--bolt-database", help="default: memgraph for --graph memgraph, neo4j for --graph neo4j "
                    "(Neo4j 4.4 Community only has `neo4j`)")
    ap.add_argument("--graph", choices=["memgraph", "neo4j"], default="memgraph")
    ap.add_argument("--model-name", default="judge-hash")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--init", action="store_true", help="check: run every storage's initialize() as LightRAG does")
    ap.add_argument("-v", "--verbose", action="store_true", help="show LightRAG's log")
    a = ap.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", a.workspace):
        ap.error("--workspace must match [A-Za-z0-9_]{1,64}")
    if not (a.redis_url or a.qdrant_grpc or a.bolt_uri):
        ap.error("give at least one of --redis-url, --qdrant-grpc, --bolt-uri")
    a.bolt_database = a.bolt_database or a.graph  # "memgraph" or "neo4j"
    # The storages read these at construction/initialize. Workspace overrides would silently
    # judge another tenant: remove them (after the imports, whose load_dotenv may have set them).
    for var in ("REDIS_WORKSPACE", "QDRANT_WORKSPACE", "MEMGRAPH_WORKSPACE", "NEO4J_WORKSPACE", "QDRANT_URL"):
        os.environ.pop(var, None)
    prefix = "MEMGRAPH" if a.graph == "memgraph" else "NEO4J"
    os.environ.update({k: v for k, v in {
        "REDIS_URI": a.redis_url, f"{prefix}_URI": a.bolt_uri, f"{prefix}_USERNAME": a.bolt_user,
        f"{prefix}_PASSWORD": a.bolt_password, f"{prefix}_DATABASE": a.bolt_database}.items() if v is not None})
    warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
    errors = ErrorLog()
    logger.addHandler(errors)
    logger.setLevel(logging.INFO if a.verbose else logging.ERROR)
    if not a.verbose:
        for h in logger.handlers:
            if h is not errors:
                h.setLevel(logging.CRITICAL)
    j = asyncio.run(run(a))
    what = f"{N_DOCS} docs, {2 * N_DOCS} chunks, {N_ENTS} entities, {N_RELS} relations"
    stores = "+".join(j.checked)
    if a.cmd == "write":
        if j.diffs or errors.records:
            sys.exit("judge: write FAILED:\n  " + "\n  ".join(j.diffs + errors.records))
        print(f"judge: wrote workspace {a.workspace!r} ({what}) to {stores}")
        return
    j.diffs += [f"LightRAG logged an error: {m}" for m in errors.records]
    if j.diffs:
        groups = {}  # "redis full_docs", "qdrant lightrag_vdb_…", "graph label `W` get_node", …
        for d in j.diffs:
            groups.setdefault(re.match(r"[^\[(:]*", d).group().strip(), []).append(d)
        lines = [f"{k}: {len(v)} difference(s)\n    " + "\n    ".join(v[:3] + ["…"] * (len(v) > 3))
                 for k, v in groups.items()]
        sys.exit(f"judge: check {a.workspace!r} --expect {a.expect}: FAILED, {len(j.diffs)} difference(s) "
                 f"in {stores}:\n  " + "\n  ".join(lines))
    print(f"judge: check {a.workspace!r} --expect {a.expect}: OK ({stores}; {what})")


if __name__ == "__main__":
    main()
