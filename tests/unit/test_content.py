"""LocalContentStore: ingest, resume, locking, verification, labels, crash safety."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dockyard import errdefs
from dockyard.image.content import LocalContentStore, copy_stream, write_blob
from dockyard.image.digest import digest_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path):
    s = LocalContentStore(tmp_path / "content")
    yield s
    s.close()


def test_write_commit_read(store: LocalContentStore) -> None:
    data = b"hello world" * 1000
    dgst = digest_bytes(data)
    with store.writer("ref-1", total=len(data), expected=dgst) as w:
        assert w.offset() == 0
        w.write(data[:100])
        w.write(data[100:])
        assert w.offset() == len(data)
        assert w.digest() == dgst
        assert w.commit(labels={"a": "b"}) == dgst
    path = store.root / "blobs" / "sha256" / dgst.split(":")[1]
    assert path.read_bytes() == data
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    assert store.read_blob(dgst) == data
    with store.open_blob(dgst) as f:
        assert f.read(5) == b"hello"
    info = store.info(dgst)
    assert info.size == len(data) and info.labels == {"a": "b"}
    assert [i.digest for i in store.walk()] == [dgst]
    assert store.list_ingests() == []  # ingest removed after commit


def test_not_found_names_digest(store: LocalContentStore) -> None:
    missing = digest_bytes(b"nope")
    for call in (store.read_blob, store.open_blob, store.info, store.delete):
        with pytest.raises(errdefs.NotFound, match=missing):
            call(missing)
    with pytest.raises(errdefs.InvalidArgument):
        store.read_blob("sha256:../../etc/passwd")


def test_digest_mismatch_is_dataloss_and_invisible(store: LocalContentStore) -> None:
    data = b"some bytes"
    wrong = digest_bytes(b"other bytes")
    w = store.writer("bad", total=len(data), expected=wrong)
    w.write(data)
    with pytest.raises(errdefs.DataLoss) as exc:
        w.commit()
    assert wrong in str(exc.value) and digest_bytes(data) in str(exc.value)
    w.close()
    assert list(store.walk()) == []
    assert store.list_ingests() == []
    with pytest.raises(errdefs.NotFound):
        store.info(digest_bytes(data))


def test_size_mismatch_is_dataloss(store: LocalContentStore) -> None:
    w = store.writer("short", total=100)
    w.write(b"x" * 10)
    with pytest.raises(errdefs.DataLoss, match="expected 100"):
        w.commit()
    assert list(store.walk()) == []
    assert store.list_ingests() == []


def test_commit_existing_is_already_exists(store: LocalContentStore) -> None:
    data = b"dup"
    dgst = write_blob(store, data).digest
    w = store.writer("second")  # no expected digest: the store cannot know yet
    w.write(data)
    with pytest.raises(errdefs.AlreadyExists, match=dgst):
        w.commit()
    assert store.list_ingests() == []
    with pytest.raises(errdefs.AlreadyExists):
        store.writer("third", expected=dgst)
    # write_blob is idempotent and merges labels.
    desc = write_blob(store, data, labels={"k": "v"}, media_type="text/plain")
    assert desc.digest == dgst and desc.size == 3 and desc.media_type == "text/plain"
    assert store.info(dgst).labels == {"k": "v"}


def test_resume_rehashes_existing_data(store: LocalContentStore) -> None:
    data = os.urandom(300_000)
    dgst = digest_bytes(data)
    w = store.writer("resume", total=len(data), expected=dgst)
    w.write(data[:123_456])
    w.close()
    status = store.ingest_status("resume")
    assert status.offset == 123_456 and status.total == len(data) and status.expected == dgst
    w = store.writer("resume", total=len(data), expected=dgst)
    assert w.offset() == 123_456
    w.write(data[123_456:])
    assert w.commit() == dgst
    assert store.read_blob(dgst) == data


def test_crash_between_link_and_cleanup_never_touches_blob(store: LocalContentStore) -> None:
    data = b"committed bytes"
    dgst = digest_bytes(data)
    with store.writer("half-done") as w:
        w.write(data)
    ingest_data = next((store.root / "ingest").iterdir()) / "data"
    os.link(ingest_data, store.blob_path(dgst))  # the commit's link, then "crash"
    with store.writer("half-done") as w:
        assert w.offset() == 0
        w.write(b"other")
    assert store.read_blob(dgst) == data


def test_truncate_rehashes(store: LocalContentStore) -> None:
    w = store.writer("trunc")
    w.write(b"abcdef")
    w.truncate(3)
    assert w.offset() == 3 and w.digest() == digest_bytes(b"abc")
    w.write(b"xyz")
    assert w.commit() == digest_bytes(b"abcxyz")


def test_second_writer_same_ref_is_locked(store: LocalContentStore) -> None:
    w = store.writer("busy")
    with pytest.raises(errdefs.Unavailable, match="ref busy locked"):
        store.writer("busy")
    with pytest.raises(errdefs.Unavailable):
        store.abort("busy")
    w.close()
    store.writer("busy").close()  # free again once closed


def test_abort_and_status(store: LocalContentStore) -> None:
    with store.writer("a1", total=10) as w:
        w.write(b"12345")
    assert [s.ref for s in store.list_ingests()] == ["a1"]
    store.abort("a1")
    assert store.list_ingests() == []
    with pytest.raises(errdefs.NotFound, match="a1"):
        store.ingest_status("a1")
    with pytest.raises(errdefs.NotFound):
        store.abort("a1")


def test_new_expected_restarts_ingest(store: LocalContentStore) -> None:
    with store.writer("r", expected=digest_bytes(b"one")) as w:
        w.write(b"on")
    with store.writer("r", expected=digest_bytes(b"two")) as w:
        assert w.offset() == 0


def test_labels_update_and_remove(store: LocalContentStore) -> None:
    dgst = write_blob(store, b"labelled", labels={"a": "1", "b": "2"}).digest
    info = store.update_labels(dgst, {"a": "", "c": "3"})
    assert info.labels == {"b": "2", "c": "3"}
    assert store.info(dgst).labels == {"b": "2", "c": "3"}
    store.delete(dgst)
    assert list(store.walk()) == []
    with pytest.raises(errdefs.NotFound):
        store.update_labels(dgst, {"x": "y"})


def test_blob_without_metadata_row_still_listed(store: LocalContentStore) -> None:
    dgst = write_blob(store, b"orphan").digest
    with store.db.transaction() as conn:
        conn.execute("DELETE FROM content")
    info = store.info(dgst)
    assert info.size == 6 and info.labels == {}
    assert [i.digest for i in store.walk()] == [dgst]


def test_copy_stream_with_progress_and_resume(store: LocalContentStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    dgst = digest_bytes(data)
    with store.writer("cp", total=len(data), expected=dgst) as w:
        w.write(data[:1000])
    seen: list[int] = []
    got = copy_stream(store, "cp", io.BytesIO(data), dgst, len(data),
                      progress=lambda off, total: seen.append(off))
    assert got == dgst and store.read_blob(dgst) == data
    assert seen[0] == 1000 + 1024 * 1024 and seen[-1] == len(data)
    # Existing content: success without reading.
    assert copy_stream(store, "cp2", io.BytesIO(b""), dgst, len(data)) == dgst


def test_concurrent_write_blob_threads(store: LocalContentStore) -> None:
    data = os.urandom(1 << 20)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assert write_blob(store, data).digest == digest_bytes(data)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [i.digest for i in store.walk()] == [digest_bytes(data)]


def _run_child(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


_CHILD_INGEST = """
import sys
from dockyard.image.content import LocalContentStore
from dockyard.image.digest import digest_bytes
root, ref, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = LocalContentStore(root)
data = ref.encode() * n
with s.writer(ref, total=len(data), expected=digest_bytes(data)) as w:
    for i in range(0, len(data), 4096):
        w.write(data[i:i + 4096])
    w.commit(labels={"ref": ref})
print("ok")
"""


def test_two_processes_ingest_different_refs(store: LocalContentStore) -> None:
    procs = [_run_child(_CHILD_INGEST, str(store.root), f"proc{i}", "50000") for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    infos = {i.labels["ref"]: i for i in store.walk()}
    assert set(infos) == {"proc0", "proc1"}
    for ref, info in infos.items():
        assert store.read_blob(info.digest) == ref.encode() * 50000


_CHILD_HOLD = """
import sys, time
from dockyard.image.content import LocalContentStore
s = LocalContentStore(sys.argv[1])
w = s.writer(sys.argv[2])
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_is_held_across_processes(store: LocalContentStore) -> None:
    p = _run_child(_CHILD_HOLD, str(store.root), "shared")
    try:
        assert p.stdout.readline().strip() == b"locked"
        with pytest.raises(errdefs.Unavailable, match="ref shared locked"):
            store.writer("shared")
    finally:
        p.kill()
        p.communicate()
    # The kernel drops the flock with the dead process: the ref is usable again.
    store.writer("shared").close()


_CHILD_KILLED = """
import os, signal, sys
from dockyard.image.content import LocalContentStore
s = LocalContentStore(sys.argv[1])
data = bytes(range(256)) * 4096
w = s.writer("killed", total=len(data))
w.write(data[:500_000])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_mid_write_leaves_resumable_ingest(store: LocalContentStore) -> None:
    p = _run_child(_CHILD_KILLED, str(store.root))
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert list(store.walk()) == []  # nothing visible
    data = bytes(range(256)) * 4096
    status = store.ingest_status("killed")
    assert status.offset == 500_000 and status.total == len(data)
    with store.writer("killed", total=len(data)) as w:
        assert w.offset() == 500_000
        w.write(data[500_000:])
        assert w.commit(expected=digest_bytes(data)) == digest_bytes(data)
    assert store.read_blob(digest_bytes(data)) == data
