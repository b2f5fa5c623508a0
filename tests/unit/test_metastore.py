"""The SQLite metadata store on its own: ids, order of checks, concurrency."""

import multiprocessing
import os
import sqlite3
import threading
import time

import pytest

from snaplab import errors
from snaplab.metastore import MetaStore
from snaplab.types import Info, Kind, Usage


@pytest.fixture
def store(tmp_path):
    s = MetaStore(str(tmp_path / "metadata.db"), backend="test")
    yield s
    s.close()


def create(store, kind, key, parent="", labels=None):
    with store.transaction(write=True) as tx:
        return tx.create_snapshot(kind, key, parent, labels or {})


def commit(store, key, name, usage=Usage(), labels=None, parent=None):
    with store.transaction(write=True) as tx:
        return tx.commit_active(key, name, usage, labels or {}, parent)


def test_ids_start_at_one_increase_and_are_never_reused(store):
    a = create(store, Kind.ACTIVE, "a")
    assert a.id == 1
    with store.transaction(write=True) as tx:
        tx.remove("a")
    b = create(store, Kind.ACTIVE, "a")
    assert b.id == 2


def test_failed_create_consumes_no_id(store):
    create(store, Kind.ACTIVE, "a")
    with pytest.raises(errors.AlreadyExists):
        create(store, Kind.ACTIVE, "a")
    with pytest.raises(errors.NotFound):
        create(store, Kind.ACTIVE, "b", parent="missing")
    assert create(store, Kind.ACTIVE, "c").id == 2


def test_commit_keeps_the_id_and_parent_chain_follows(store):
    a = create(store, Kind.ACTIVE, "a")
    assert commit(store, "a", "base", Usage(10, 2)) == a.id
    child = create(store, Kind.ACTIVE, "child", parent="base")
    assert child.parent_ids == [a.id]
    commit(store, "child", "mid")
    top = create(store, Kind.VIEW, "top", parent="mid")
    assert top.parent_ids == [child.id, a.id]
    with store.transaction() as tx:
        _, info, usage = tx.get_info("base")
    assert usage == Usage(10, 2)
    assert info.created == info.updated


def test_rollback_on_exception_changes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction(write=True) as tx:
            tx.create_snapshot(Kind.ACTIVE, "a", "", {})
            raise RuntimeError("filesystem work failed")
    with store.transaction() as tx:
        assert tx.id_map() == {}


def test_timestamps_have_nanoseconds_and_update_moves_only_updated(store):
    create(store, Kind.ACTIVE, "a", labels={"x": "1"})
    with store.transaction() as tx:
        before = tx.get_info("a")[1]
    time.sleep(0.001)
    with store.transaction(write=True) as tx:
        after = tx.update_info(Info(Kind.COMMITTED, "a", parent="p", labels={"y": "2"}), ())
    assert after.created == before.created
    assert after.updated > before.updated
    assert (after.kind, after.parent, after.labels) == (Kind.ACTIVE, "", {"y": "2"})
    assert isinstance(before.created, int) and before.created > 1_600_000_000 * 10**9


def test_update_field_paths(store):
    create(store, Kind.ACTIVE, "a", labels={"l1": "v1", "l2": "v2", "l3": "v3"})

    def update(labels, *paths):
        with store.transaction(write=True) as tx:
            return tx.update_info(Info(Kind.ACTIVE, "a", labels=labels), paths).labels

    assert update({"l1": "updated", "l4": "v4"}, "labels.l1", "labels.l2") == {
        "l1": "updated", "l3": "v3"}
    assert update({"l4": "v4"}, "labels") == {"l4": "v4"}
    assert update({"l4": ""}, "labels.l4") == {}
    with pytest.raises(errors.InvalidArgument):
        update({"l5": "v"}, "labels.l5", "parent")
    assert update({}, "labels.nothing") == {}


def test_a_root_belongs_to_one_backend(tmp_path):
    path = str(tmp_path / "metadata.db")
    MetaStore(path, backend="overlay").close()
    with pytest.raises(errors.FailedPrecondition, match="overlay"):
        MetaStore(path, backend="native")


def test_closed_store_refuses_work(store):
    store.close()
    store.close()
    with pytest.raises(errors.FailedPrecondition):
        with store.transaction():
            pass


def test_walk_is_in_byte_order_of_keys(store):
    for key in ["b", "a", "é", "Z", "/abs/path", "a b"]:
        create(store, Kind.ACTIVE, key)
    from snaplab import filters
    with store.transaction() as tx:
        keys = [i.name for i in tx.walk(filters.parse())]
    assert keys == sorted(keys, key=lambda k: k.encode("utf-8"))


def test_threads_share_one_store(store):
    failures = []

    def work(n):
        try:
            for i in range(20):
                create(store, Kind.ACTIVE, "t%d-%d" % (n, i))
        except Exception as err:  # pragma: no cover - reported below
            failures.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with store.transaction() as tx:
        assert len(tx.id_map()) == 80


def _hold_write_lock(path, seconds, ready):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    ready.set()
    time.sleep(seconds)
    db.execute("COMMIT")
    db.close()


def test_a_writer_waits_for_another_process_instead_of_failing(store, tmp_path):
    """No 'database is locked' reaches a caller while another process writes."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_write_lock, args=(store.path, 1.0, ready))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        create(store, Kind.ACTIVE, "waited")
        assert time.monotonic() - started >= 0.5
    finally:
        holder.join()
    with store.transaction() as tx:
        assert tx.get_info("waited")[1].kind == Kind.ACTIVE
    assert os.stat(store.path).st_mode & 0o777 == 0o600
