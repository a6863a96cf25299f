"""The audit log: record format, tamper detection, rotation, concurrent writers, queries."""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineage.audit import GENESIS, AuditEvent, AuditLog, canonical_json
from microdb.errors import AuditError

KEY = b"k" * 32


def event(i: int = 0, **kw) -> AuditEvent:
    base = dict(action="query", outcome="ok", actor="alice", role="analyst", entity=f"customer/{i}",
                sql="SELECT * FROM accounts", rows=i, details={"i": i})
    base.update(kw)
    return AuditEvent(**base)


def filled(tmp_path: Path, n: int = 6, **kw) -> AuditLog:
    log = AuditLog(tmp_path / "audit", KEY, fsync=False, **kw)
    log.append_many([event(i) for i in range(1, n + 1)])
    return log


def lines(log: AuditLog, name: str = "audit.jsonl") -> list[bytes]:
    return (log.directory / name).read_bytes().splitlines()


def write_lines(log: AuditLog, rows: list[bytes], name: str = "audit.jsonl") -> None:
    (log.directory / name).write_bytes(b"".join(r + b"\n" for r in rows))


def assert_broken(log: AuditLog, *, first_bad: int, line: int, reason: str, file: str = "audit.jsonl") -> None:
    result = log.verify()
    assert not result.ok
    assert (result.first_bad, result.file, result.line) == (first_bad, file, line), result
    assert reason in result.reason, result.reason
    assert result.records == first_bad - 1


# ------------------------------------------------------------------ record format


def test_record_is_canonical_chained_and_signed(tmp_path):
    log = AuditLog(tmp_path, KEY, fsync=False)
    first = log.append(event(1))
    second = log.append(event(2, outcome="refused", error="guard: COPY refused"))
    raw = lines(log)
    assert [json.loads(r) for r in raw] == [first, second]
    assert raw[0] == canonical_json(first)  # sorted keys, no spaces
    assert b" " not in raw[0].replace(b"SELECT * FROM accounts", b"")
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["prev"] == GENESIS
    assert second["prev"] == hashlib.sha256(raw[0]).hexdigest()
    unsigned = {k: v for k, v in second.items() if k != "hmac"}
    assert second["hmac"] == hmac.new(KEY, canonical_json(unsigned), hashlib.sha256).hexdigest()
    assert first["sql_hash"] == hashlib.sha256(b"SELECT * FROM accounts").hexdigest()
    stamp = datetime.fromisoformat(first["time"])
    assert stamp.utcoffset() == timedelta(0) and len(first["time"].split(".")[1]) == len("123456+00:00")
    assert log.verify().ok and log.verify().records == 2


def test_unicode_survives_and_is_utf8(tmp_path):
    log = AuditLog(tmp_path, KEY, fsync=False)
    log.append(event(1, actor="zoë", details={"note": "naïve ✓"}))
    assert "zoë".encode() in lines(log)[0]
    assert log.verify().ok


@pytest.mark.parametrize(
    "bad",
    [dict(outcome="maybe"), dict(action=""), dict(actor=""), dict(rows=-1), dict(rows=True), dict(details=[1])],
)
def test_invalid_events_are_refused(bad):
    with pytest.raises(AuditError):
        event(1, **bad)


def test_unserializable_details_fail_and_write_nothing(tmp_path):
    log = filled(tmp_path, 2)
    with pytest.raises(AuditError, match="JSON-serializable"):
        log.append(event(3, details={"when": datetime.now()}))
    with pytest.raises(AuditError, match="JSON-serializable"):
        log.append(event(3, details={"x": float("nan")}))
    assert len(lines(log)) == 2 and log.verify().ok


def test_short_key_is_refused(tmp_path):
    with pytest.raises(AuditError, match="key"):
        AuditLog(tmp_path, b"short")


def test_unwritable_log_fails_the_caller(tmp_path):
    log = AuditLog(tmp_path, KEY, fsync=False)
    (tmp_path / "audit.jsonl").mkdir()  # the log file cannot be opened for writing
    with pytest.raises(AuditError, match="cannot append"):
        log.append(event(1))


def test_new_instance_continues_the_chain(tmp_path):
    filled(tmp_path, 3)
    again = AuditLog(tmp_path / "audit", KEY, fsync=True)
    record = again.append(event(4))
    assert record["seq"] == 4
    assert again.verify().ok and again.verify().records == 4


# ------------------------------------------------------------------ tampering


def test_untouched_log_verifies(tmp_path):
    log = filled(tmp_path)
    result = log.verify()
    assert (result.ok, result.records, result.files, result.first_bad, result.reason) == (True, 6, 1, None, None)


def test_edited_field_is_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    rows[2] = rows[2].replace(b'"actor":"alice"', b'"actor":"mallory"')
    write_lines(log, rows)
    assert_broken(log, first_bad=3, line=3, reason="HMAC")


def test_edit_with_recomputed_chain_but_no_key_is_detected(tmp_path):
    log = filled(tmp_path)
    records = [json.loads(r) for r in lines(log)]
    records[2]["rows"] = 0
    records[2]["hmac"] = hmac.new(b"x" * 32, b"guess", hashlib.sha256).hexdigest()
    rebuilt, prev = [], GENESIS
    for rec in records:  # the attacker fixes every prev hash, but cannot sign
        rec["prev"] = prev
        line = canonical_json(rec)
        rebuilt.append(line)
        prev = hashlib.sha256(line).hexdigest()
    write_lines(log, rebuilt)
    assert_broken(log, first_bad=3, line=3, reason="HMAC")


def test_deleted_record_is_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    del rows[3]
    write_lines(log, rows)
    assert_broken(log, first_bad=4, line=4, reason="seq 5 where 4 was expected")


def test_reordered_records_are_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    rows[1], rows[2] = rows[2], rows[1]
    write_lines(log, rows)
    assert_broken(log, first_bad=2, line=2, reason="seq 3 where 2 was expected")


def test_inserted_forged_record_is_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    forged = json.loads(rows[2])
    forged.update(seq=3, actor="mallory", prev=hashlib.sha256(rows[1]).hexdigest())
    forged["hmac"] = hmac.new(b"not the key" * 3, canonical_json(forged), hashlib.sha256).hexdigest()
    rows.insert(2, canonical_json(forged))
    write_lines(log, rows)
    assert_broken(log, first_bad=3, line=3, reason="HMAC")


def test_replayed_genuine_record_is_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    rows.insert(4, rows[1])
    write_lines(log, rows)
    assert_broken(log, first_bad=5, line=5, reason="seq 2 where 5 was expected")


def test_reserialized_record_is_detected(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    rows[1] = json.dumps(json.loads(rows[1]), sort_keys=True).encode()  # same values, spaces added
    write_lines(log, rows)
    assert_broken(log, first_bad=2, line=2, reason="canonical")


def test_truncated_last_record_is_detected_and_blocks_appends(tmp_path):
    log = filled(tmp_path)
    path = log.directory / "audit.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    assert_broken(log, first_bad=6, line=6, reason="truncated")
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(log.directory, KEY).append(event(7))


def test_forged_tail_blocks_appends(tmp_path):
    log = filled(tmp_path)
    rows = lines(log)
    rows[-1] = rows[-1].replace(b'"actor":"alice"', b'"actor":"mallory"')
    write_lines(log, rows)
    with pytest.raises(AuditError, match="HMAC"):
        AuditLog(log.directory, KEY).append(event(7))


def test_wrong_key_fails_verification(tmp_path):
    log = filled(tmp_path)
    assert_broken(AuditLog(log.directory, b"w" * 32), first_bad=1, line=1, reason="HMAC")


# ------------------------------------------------------------------ rotation


def test_rotation_keeps_one_chain_across_files(tmp_path):
    log = AuditLog(tmp_path, KEY, max_bytes=2_000, fsync=False)
    for i in range(1, 41):
        log.append(event(i))
    files = log.files()
    assert len(files) > 3 and files[-1].name == "audit.jsonl"
    for path in files:
        assert path.stat().st_size <= 2_000
        first = json.loads(path.read_bytes().splitlines()[0])
        if path.name != "audit.jsonl":
            assert path.name == f"audit-{first['seq']:012d}.jsonl"
    # the first record of each file points at the last record of the previous file
    for before, after in zip(files, files[1:]):
        last = before.read_bytes().splitlines()[-1]
        assert json.loads(after.read_bytes().splitlines()[0])["prev"] == hashlib.sha256(last).hexdigest()
    result = log.verify()
    assert (result.ok, result.records, result.files) == (True, 40, len(files))
    assert log.query().column("seq").to_pylist() == list(range(1, 41))


def test_append_many_rotates_inside_one_batch(tmp_path):
    log = AuditLog(tmp_path, KEY, max_bytes=3_000, fsync=False)
    written = log.append_many([event(i) for i in range(1, 31)])
    assert [r["seq"] for r in written] == list(range(1, 31))
    assert len(log.files()) > 2
    assert log.verify().ok and log.verify().records == 30


def test_deleted_rotated_file_is_detected(tmp_path):
    log = AuditLog(tmp_path, KEY, max_bytes=2_000, fsync=False)
    for i in range(1, 41):
        log.append(event(i))
    files = log.files()
    missing, following = files[1], files[2]
    first_missing = int(missing.name[len("audit-"):-len(".jsonl")])
    missing.unlink()
    assert_broken(log, first_bad=first_missing, line=1, file=following.name, reason="rotated file is missing")


def test_renamed_rotated_file_is_detected(tmp_path):
    log = AuditLog(tmp_path, KEY, max_bytes=2_000, fsync=False)
    for i in range(1, 41):
        log.append(event(i))
    first_file = log.files()[0]
    first_file.rename(first_file.with_name("audit-000000000999.jsonl"))
    result = log.verify()
    assert not result.ok and result.first_bad == 1 and result.line == 1


# ------------------------------------------------------------------ concurrency


def _writer(directory: str, worker: int, count: int, max_bytes: int, gate) -> None:
    gate.wait()
    log = AuditLog(Path(directory), KEY, max_bytes=max_bytes, fsync=False)
    for i in range(count):
        if i % 100 == 99:  # some batches too, interleaved with single appends
            log.append_many([event(i, actor=f"w{worker}"), event(i, actor=f"w{worker}", action="export")])
        else:
            log.append(event(i, actor=f"w{worker}"))


@pytest.mark.parametrize("max_bytes", [64 * 1024 * 1024, 200_000], ids=["one-file", "rotating"])
def test_eight_processes_never_interleave_or_lose_records(tmp_path, max_bytes):
    workers, per_worker = 8, 1_000
    ctx = multiprocessing.get_context("fork")
    gate = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, per_worker, max_bytes, gate)) for w in range(workers)]
    for p in procs:
        p.start()
    gate.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    expected = workers * (per_worker + per_worker // 100)  # each batch adds one extra record
    log = AuditLog(tmp_path, KEY)
    result = log.verify()
    assert result.ok, result
    assert result.records == expected
    table = log.query()
    assert table.num_rows == expected
    assert table.column("seq").to_pylist() == list(range(1, expected + 1))
    actors = table.group_by("actor").aggregate([("seq", "count")]).to_pydict()
    assert dict(zip(actors["actor"], actors["seq_count"])) == {f"w{w}": expected // workers for w in range(workers)}
    if max_bytes < 1_000_000:
        assert result.files > 5


def test_threads_share_one_log_and_separate_instances(tmp_path):
    shared = AuditLog(tmp_path, KEY, max_bytes=100_000, fsync=False)

    def work(n: int) -> None:
        log = shared if n % 2 else AuditLog(tmp_path, KEY, max_bytes=100_000, fsync=False)
        for i in range(400):
            log.append(event(i, actor=f"t{n}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = shared.verify()
    assert result.ok and result.records == 3_200 and result.files > 1


# ------------------------------------------------------------------ query


def test_query_filters(tmp_path):
    log = AuditLog(tmp_path, KEY, fsync=False)
    log.append_many([
        event(1, actor="alice", action="query"),
        event(2, actor="bob", action="export", outcome="refused", error="role analyst may not export"),
        event(1, actor="bob", action="detokenize"),
        event(3, actor="alice", action="forget", entity="customer/3"),
        event(0, actor="carol", action="query", entity="customer/*", rows=None),
    ])
    assert log.query(entity="customer/1").column("seq").to_pylist() == [1, 3]
    assert log.query(actor="bob").column("action").to_pylist() == ["export", "detokenize"]
    assert log.query(action="query").column("actor").to_pylist() == ["alice", "carol"]
    refused = log.query(outcome="refused")
    assert refused.column("error").to_pylist() == ["role analyst may not export"]
    assert log.query(entity="customer/*", action="query").column("rows").to_pylist() == [None]
    assert log.query(actor="bob", action="export", outcome="ok").num_rows == 0
    assert json.loads(log.query(entity="customer/3").column("details")[0].as_py()) == {"i": 3}

    now = datetime.now(timezone.utc)
    assert log.query(since=now - timedelta(minutes=1)).num_rows == 5
    assert log.query(since=now + timedelta(minutes=1)).num_rows == 0
    assert log.query(until=now - timedelta(minutes=1)).num_rows == 0
    assert log.query(since=(now - timedelta(minutes=1)).replace(tzinfo=None)).num_rows == 5  # naive = UTC
    times = log.query().column("time")
    assert str(times.type) == "timestamp[us, tz=UTC]"


def test_query_on_an_empty_log_has_the_schema(tmp_path):
    table = AuditLog(tmp_path, KEY).query(actor="nobody")
    assert table.num_rows == 0
    assert "seq" in table.column_names and "details" in table.column_names
