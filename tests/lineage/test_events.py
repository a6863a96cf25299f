"""OpenLineage run events: START/COMPLETE/FAIL, schema facets, the microdb facet, HTTP transport."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lineage.events import PRODUCER, DatasetRef, LineageEmitter, MicrodbRunFacet
from lineage_check import assert_valid, rebuild  # noqa: F401
from microdb.errors import AuditError, ConfigError

SOURCE = DatasetRef("postgresql://127.0.0.1:5432/test", "public.customers", [("id", "int64"), ("name", "string")])
BUNDLE = DatasetRef("microdb://bundles", "b-2024-01/accounts", [("account_id", "int64"), ("balance", "double")])


def microdb_facet() -> MicrodbRunFacet:
    return MicrodbRunFacet(policy_hash="9f2c", generator="copula", parameters={"entities": 500}, seed=7,
                           source_watermark="2024-05-01T00:00:00Z", bundle="b-2024-01")


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_successful_run_emits_start_then_complete(tmp_path):
    path = tmp_path / "lineage" / "events.jsonl"
    emitter = LineageEmitter("microdb", file_path=path)
    with emitter.run("synth.sample", inputs=[SOURCE], outputs=[], facets={"microdb": microdb_facet()}) as run:
        run.add_output(BUNDLE)
        run.set_facet("microdb", microdb_facet())
    start, complete = read_events(path)
    for e in (start, complete):
        assert_valid(e)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"] == run.run_id
    assert uuid.UUID(run.run_id).version == 7
    assert start["job"] == complete["job"] == {"namespace": "microdb", "name": "synth.sample", "facets": {}}
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [(SOURCE.namespace, SOURCE.name)]
    assert start["outputs"] == []
    assert [d["name"] for d in complete["outputs"]] == ["b-2024-01/accounts"]
    fields = complete["outputs"][0]["facets"]["schema"]["fields"]
    assert [(f["name"], f["type"], f["ordinal_position"]) for f in fields] == [
        ("account_id", "int64", 1), ("balance", "double", 2)]
    facet = complete["run"]["facets"]["microdb"]
    assert facet["policy_hash"] == "9f2c" and facet["generator"] == "copula" and facet["seed"] == 7
    assert facet["parameters"] == {"entities": 500} and facet["bundle"] == "b-2024-01"
    assert facet["_producer"] == PRODUCER and facet["_schemaURL"].endswith("#/$defs/MicrodbRunFacet")
    assert "errorMessage" not in complete["run"]["facets"]


def test_failing_run_emits_fail_with_error_and_reraises(tmp_path):
    path = tmp_path / "events.jsonl"
    emitter = LineageEmitter("microdb", file_path=path)
    with pytest.raises(ValueError, match="generator diverged"):
        with emitter.run("synth.fit", [SOURCE], [], {"microdb": microdb_facet()}):
            raise ValueError("generator diverged")
    start, fail = read_events(path)
    assert_valid(start)
    assert_valid(fail)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: generator diverged"
    assert error["programmingLanguage"] == "PYTHON" and "generator diverged" in error["stackTrace"]
    assert "microdb" in fail["run"]["facets"]


def test_interrupted_run_emits_abort(tmp_path):
    path = tmp_path / "events.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with LineageEmitter("microdb", file_path=path).run("sync", [SOURCE], [], {}):
            raise KeyboardInterrupt
    assert [e["eventType"] for e in read_events(path)] == ["START", "ABORT"]


def test_runs_get_distinct_ids_and_share_one_file(tmp_path):
    path = tmp_path / "events.jsonl"
    emitter = LineageEmitter("microdb", file_path=path)
    ids = []
    for job in ("sync", "provision"):
        with emitter.run(job, [SOURCE], [BUNDLE], {}) as run:
            ids.append(run.run_id)
    events = read_events(path)
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("sync", "START"), ("sync", "COMPLETE"), ("provision", "START"), ("provision", "COMPLETE")]
    assert ids[0] != ids[1] and [e["run"]["runId"] for e in events] == [ids[0], ids[0], ids[1], ids[1]]


def test_dataset_without_fields_has_no_schema_facet_and_from_arrow_has_one():
    assert DatasetRef("ns", "t").as_input().facets == {}
    ref = DatasetRef.from_arrow("ns", "t", pa.schema([("id", pa.int64()), ("at", pa.timestamp("us"))]))
    assert ref.fields == (("id", "int64"), ("at", "timestamp[us]"))
    assert [f.name for f in ref.as_output().facets["schema"].fields] == ["id", "at"]


def test_configuration_errors():
    with pytest.raises(ConfigError, match="file path, an HTTP URL"):
        LineageEmitter("microdb")
    with pytest.raises(ConfigError, match="http_url"):
        LineageEmitter("microdb", http_url="not a url")
    with pytest.raises(ConfigError, match="RunFacet"):
        LineageEmitter("microdb", http_url="http://127.0.0.1:9").run("sync").set_facet("x", {"a": 1})


# ------------------------------------------------------------------ HTTP transport


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict[str, Any]]]
    status: int

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lineage_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    server.status = 201  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_transport_posts_events(lineage_server, tmp_path):
    url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    path = tmp_path / "events.jsonl"
    with LineageEmitter("microdb", file_path=path, http_url=url) as emitter:
        with emitter.run("provision", [BUNDLE], [SOURCE], {"microdb": microdb_facet()}) as run:
            pass
    received = lineage_server.received
    assert [(p, ct) for p, ct, _ in received] == [("/api/v1/lineage", "application/json")] * 2
    bodies = [b for _, _, b in received]
    assert [b["eventType"] for b in bodies] == ["START", "COMPLETE"]
    assert {b["run"]["runId"] for b in bodies} == {run.run_id}
    for b in bodies:
        assert_valid(b)
    assert bodies == read_events(path)  # file and HTTP carry the same events


def test_http_rejection_raises_audit_error(lineage_server):
    lineage_server.status = 400  # not retried by the client
    url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    with pytest.raises(AuditError, match="cannot emit START for job microdb/sync via http"):
        with LineageEmitter("microdb", http_url=url).run("sync", [SOURCE], [], {}):
            pytest.fail("the body must not run when START cannot be emitted")
    assert len(lineage_server.received) == 1


def test_failed_fail_event_keeps_the_original_error(lineage_server):
    url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    emitter = LineageEmitter("microdb", http_url=url)
    with pytest.raises(ZeroDivisionError) as info:
        with emitter.run("sync", [SOURCE], [], {}):
            lineage_server.status = 400
            1 / 0  # noqa: B018
    assert any("lineage FAIL event was not emitted" in note for note in info.value.__notes__)


def test_validation_rejects_malformed_events(tmp_path):
    path = tmp_path / "events.jsonl"
    with LineageEmitter("microdb", file_path=path).run("sync", [SOURCE], [], {"microdb": microdb_facet()}):
        pass
    good = read_events(path)[0]
    bad_id = json.loads(json.dumps(good))
    bad_id["run"]["runId"] = "run-1"
    bad_time = dict(good, eventTime="2024-05-01")
    extra = json.loads(json.dumps(good))
    extra["run"]["facets"]["microdb"]["unexpected"] = 1
    for broken in (bad_id, bad_time, extra, dict(good, eventType="DONE")):
        with pytest.raises((TypeError, ValueError)):
            assert_valid(broken)
