"""The object-store backend on a real S3-compatible server (moto in server mode): sealing,
packed segments, atomic partition publish, concurrent writers, forgetting, errors."""

from __future__ import annotations

import threading

import boto3
import pyarrow as pa
import pytest
from conftest import S3_BUCKET, unique_name

from microdb.errors import ConfigError, KeyMaterialError, SealError
from microdb.keys import Keyring
from microdb.store import SealedItem, StoreUnavailable, partition_ids, partition_of
from microdb.store_s3 import MAX_SEGMENTS, S3Store


def _store(endpoint: str, url: str | None = None, key: bytes = b"k" * 32, partitions: int = 4) -> S3Store:
    return S3Store(url or f"s3://{S3_BUCKET}/{unique_name()}", Keyring(key), endpoint=endpoint, partitions=partitions)


def _item(store: S3Store, key: str, secret: str) -> SealedItem:
    t = pa.table({"id": [1, 2], "secret": [secret, secret + "-2"]})
    sid = store.register_schema(t.schema)
    return SealedItem(key, {"things": (sid, t.to_batches()[0])}, 2)


def _objects(store: S3Store, bucket: str | None = None) -> dict[str, bytes]:
    c = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1")
    res = c.list_objects_v2(Bucket=bucket or store.bucket, Prefix=store.prefix + "/")
    return {o["Key"]: c.get_object(Bucket=bucket or store.bucket, Key=o["Key"])["Body"].read()
            for o in res.get("Contents", [])}


def _all_versions(store: S3Store) -> list[bytes]:
    c = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1")
    res = c.list_object_versions(Bucket=store.bucket, Prefix=store.prefix + "/")
    return [c.get_object(Bucket=store.bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            for v in res.get("Versions", [])]


def test_partition_function_is_stable():
    keys = [str(i) for i in range(2000)] + ["a/b", "ünïcode", ""]
    assert partition_ids(keys, 16).tolist() == [partition_of(k, 16) for k in keys]
    assert partition_of("42", 16) == 8  # pinned: a change would orphan every stored partition


def test_round_trip_packed_segments_and_no_plaintext(s3_server):
    store = _store(s3_server)
    keys = [f"KEY-{i:04d}" for i in range(200)]
    store.put("thing", [_item(store, k, f"PLAINTEXT-SSN-{k}") for k in keys])
    assert store.count("thing") == 200
    got = store.get("thing", "KEY-0017").tables["things"]["secret"].to_pylist()
    assert got == ["PLAINTEXT-SSN-KEY-0017", "PLAINTEXT-SSN-KEY-0017-2"]
    assert store.get("thing", "nope") is None and store.info("thing", "nope") is None
    objects = _objects(store)
    segments = [k for k in objects if "/seg-" in k]
    assert len(segments) == 4  # one packed segment per partition, not one object per entity
    assert sum("/index" in k for k in objects) == 4
    for name, body in objects.items():
        assert b"PLAINTEXT-SSN" not in body, name
        assert b"KEY-00" not in body, name  # entity keys are only in the encrypted index
    assert store.keys("thing") == keys
    assert store.keys("thing", limit=3, offset=1) == keys[1:4]


def test_wrong_master_key_and_partition_count_are_refused(s3_server):
    store = _store(s3_server)
    with pytest.raises(KeyMaterialError, match="does not match"):
        _store(s3_server, store.url, key=b"x" * 32)
    with pytest.raises(ConfigError, match="created with 4 partitions"):
        _store(s3_server, store.url, partitions=8)


def test_missing_bucket_and_credentials_fail_with_a_clear_message(s3_server, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        _store(s3_server, "s3://no-such-bucket-here/x")
    with pytest.raises(StoreUnavailable, match="127.0.0.1:9"):
        S3Store(f"s3://{S3_BUCKET}/x", Keyring(b"k" * 32), endpoint="http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        _store(s3_server)


def test_tampered_segment_and_moved_index_fail_authentication(s3_server):
    store = _store(s3_server)
    store.put("thing", [_item(store, str(i), "s") for i in range(40)])
    c = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    d = store._dir("entity", "thing", partition_of("7", 4))
    seg = store._index(d).table.filter(pa.compute.equal(store._index(d).table["key"], "7"))["segment"][0].as_py()
    body = bytearray(c.get_object(Bucket=S3_BUCKET, Key=f"{d}/{seg}")["Body"].read())
    row = store._row("entity", "thing", "7")[1]
    body[row["offset"] + 3] ^= 1
    c.put_object(Bucket=S3_BUCKET, Key=f"{d}/{seg}", Body=bytes(body))
    with pytest.raises(SealError, match="thing/7"):
        store.get("thing", "7")
    other = store._dir("entity", "thing", (partition_of("7", 4) + 1) % 4)
    moved = c.get_object(Bucket=S3_BUCKET, Key=f"{other}/index")["Body"].read()
    c.put_object(Bucket=S3_BUCKET, Key=f"{d}/index", Body=moved)
    store.invalidate()
    with pytest.raises(SealError, match="failed authentication"):
        store.get("thing", "7")


def test_a_failed_publish_shows_nothing_of_the_partition(s3_server, monkeypatch):
    store = _store(s3_server)
    store.put("thing", [_item(store, str(i), "old") for i in range(50)])
    before = {k: store.info("thing", k).version for k in store.keys("thing")}

    def crash(*a, **kw):
        raise StoreUnavailable("connection dropped before the index was replaced")

    monkeypatch.setattr(store, "_publish", crash)
    with pytest.raises(StoreUnavailable):
        store.put("thing", [_item(store, str(i), "new") for i in range(100)])
    monkeypatch.undo()
    reader = _store(s3_server, store.url)
    assert reader.count("thing") == 50
    for k, v in before.items():
        assert reader.info("thing", k).version == v
        assert reader.get("thing", k).tables["things"]["secret"][0].as_py() == "old"
    orphans = [k for k in _objects(store) if "/seg-" in k]
    assert len(orphans) > 4  # the new segments were uploaded but never published
    assert store.vacuum("thing", older_than=0) == len(orphans) - 4
    assert reader.get("thing", "3").tables["things"]["secret"][0].as_py() == "old"


def test_concurrent_writers_lose_nothing(s3_server):
    url = _store(s3_server, partitions=1).url
    writers = [_store(s3_server, url, partitions=1) for _ in range(4)]
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for batch in range(5):
                writers[w].put("thing", [_item(writers[w], f"{w}-{batch}-{i}", "x") for i in range(3)])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _store(s3_server, url, partitions=1).count("thing") == 4 * 5 * 3
    listed = {k.rsplit("/", 1)[1] for k in _objects(writers[0]) if "/seg-" in k}
    indexed = set(writers[0]._index(writers[0]._dir("entity", "thing", 0), fresh=True).table["segment"].to_pylist())
    assert listed == indexed  # no segment leaked by a lost race
    assert len(indexed) <= MAX_SEGMENTS + 1  # compaction keeps the partition to a few segments


@pytest.mark.parametrize("versioned", [False, True])
def test_forget_removes_key_and_ciphertext(s3_server, versioned):
    c = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = S3_BUCKET
    if versioned:
        bucket = "microdb-versioned-" + unique_name("v").split("_")[1]
        c.create_bucket(Bucket=bucket)
        c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = _store(s3_server, f"s3://{bucket}/{unique_name()}")

    def sealed() -> tuple[bytes, dict]:
        d, row = store._row("entity", "thing", "7")
        return c.get_object(Bucket=bucket, Key=f"{d}/{row['segment']}",
                            Range=f"bytes={row['offset']}-{row['offset'] + row['length'] - 1}")["Body"].read(), row

    store.put("thing", [_item(store, str(i), f"v{i}") for i in range(30)])
    first, first_row = sealed()
    store.put("thing", [_item(store, "7", "second version")])  # the first copy stays in the first segment
    blob, row = sealed()
    assert store.forget("thing", "7") is True
    assert store.forget("thing", "7") is False
    assert store.info("thing", "7") is None and store.get("thing", "7") is None
    bodies = _all_versions(store) if versioned else list(_objects(store, bucket).values())
    for gone in (blob, first, row["wrapped"], first_row["wrapped"]):
        assert not any(gone in b for b in bodies)
    # the index no longer names it, in any version
    for name in [k for k in _objects(store, bucket) if k.endswith("/index")]:
        assert "7" not in store._open_index(name, _objects(store, bucket)[name])["key"].to_pylist()
    assert store.count("thing") == 29
    assert store.get("thing", "8").tables["things"]["secret"][0].as_py() == "v8"
