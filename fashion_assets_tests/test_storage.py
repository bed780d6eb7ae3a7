import threading

import pytest

from fashion_assets.core.parallel import chunked_map, usable_cores
from fashion_assets.core.storage import StoreError, md5_hex
from fashion_assets.resources import ConfigurationError, S3StoreResource


def test_store_contract(backend):
    store = backend.store()
    store.check()
    store.put_bytes("a/b/1.jpg", b"one", "image/jpeg")
    store.put_bytes("a/b/2.jpg", b"two")
    store.put_bytes("a/c.txt", b"three")
    assert store.get_bytes("a/b/1.jpg") == b"one"
    assert store.exists("a/b/2.jpg") and not store.exists("a/b/3.jpg")
    listed = list(store.list("a/b/"))
    assert [(o.key, o.size) for o in listed] == [("a/b/1.jpg", 3), ("a/b/2.jpg", 3)]
    # An MD5 only where the store knows it cheaply (a plain S3 ETag); never a wrong one.
    assert [o.md5 for o in listed] in ([None, None], [md5_hex(b"one"), md5_hex(b"two")])
    assert [o.key for o in store.list("a/")] == ["a/b/1.jpg", "a/b/2.jpg", "a/c.txt"]
    store.copy("a/b/1.jpg", "z/1.jpg")
    assert store.get_bytes("z/1.jpg") == b"one"
    store.put_bytes("a/b/1.jpg", b"uno")  # overwriting the source leaves the copy alone
    assert store.get_bytes("z/1.jpg") == b"one"
    store.delete("a/b/2.jpg")
    store.delete("a/b/never-there.jpg")
    assert [o.key for o in store.list("a/b/")] == ["a/b/1.jpg"]
    assert list(store.list("nothing/")) == []
    assert store.uri("z/1.jpg").endswith("z/1.jpg")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a\\b"])
def test_keys_cannot_escape_the_store(backend, key):
    with pytest.raises(ValueError, match="invalid object key"):
        backend.store().put_bytes(key, b"x")


def test_missing_bucket_names_the_variable(s3_server):
    resource = S3StoreResource(url="s3://no-such-bucket/x", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        resource.get_store().check()
    with pytest.raises(ConfigurationError, match="FASHION_STORE_URL=s3://no-such-bucket/x: bucket"):
        resource.setup_for_execution(None)


def test_chunked_map_gives_every_item_once_in_chunks_on_the_threads():
    threads: dict[int, set[str]] = {}

    def square(n: int) -> int:
        threads.setdefault(n // 32, set()).add(threading.current_thread().name)
        return n * n

    out = list(chunked_map(square, range(1000), workers=4, chunk=32))
    assert sorted(out) == [n * n for n in range(1000)]
    # A chunk's items stay together, in their order, and one thread does each chunk.
    start = 0
    while start < len(out):
        first = round(out[start] ** 0.5)
        chunk = [n * n for n in range(first, min(first + 32, 1000))]
        assert first % 32 == 0 and out[start:start + len(chunk)] == chunk
        start += len(chunk)
    assert len(threads) == 32 and all(len(names) == 1 for names in threads.values())
    assert all(name.startswith("fashion-io") for names in threads.values() for name in names)
    assert list(chunked_map(square, [], workers=4)) == []


def test_chunked_map_keeps_every_thread_busy_on_few_items_and_stops_when_the_caller_does():
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def wait_then_echo(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == 8:
                release.set()
        release.wait(10)
        with lock:
            running -= 1
        return n

    # 16 items on 8 threads: chunks of 1, so all 8 threads work at once (not one chunk of 16).
    assert sorted(chunked_map(wait_then_echo, list(range(16)), workers=8)) == list(range(16))
    assert most == 8

    done: list[int] = []

    def record(n: int) -> int:
        done.append(n)
        return n

    results = chunked_map(record, iter(range(10_000)), workers=2, chunk=100)  # no length: chunks of 100
    first = [next(results) for _ in range(3)]  # the start of whichever chunk finished first
    assert first[0] % 100 == 0 and first == [first[0], first[0] + 1, first[0] + 2]
    results.close()  # the caller stops: no chunk goes on past its current item
    assert len(done) <= 4 * 100
    with pytest.raises(ValueError, match="chunk must be at least 1, not 0"):
        list(chunked_map(record, [1], workers=2, chunk=0))


def test_chunked_map_raises_what_an_item_raised():
    def refuse_7(n: int) -> int:
        if n == 7:
            raise ValueError("item 7")
        return n

    with pytest.raises(ValueError, match="item 7"):
        list(chunked_map(refuse_7, range(100), workers=2, chunk=8))


def test_usable_cores_is_the_affinity_capped_by_the_cgroup_quota(tmp_path):
    import os

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "absent") == affinity  # no cgroup v2 file: the affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity  # no quota
    cpu_max.write_text("150000 100000\n")  # a 1.5-CPU limit: 2 threads' worth
    assert usable_cores(cpu_max) == min(affinity, 2)
    cpu_max.write_text("10000 100000\n")  # 0.1 CPU: still one
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{100000 * (affinity + 8)} 100000\n")  # a quota above the cpuset: the cpuset
    assert usable_cores(cpu_max) == affinity
    for unreadable in ("", "garbage", "150000 0", "150000 x"):
        cpu_max.write_text(unreadable)
        assert usable_cores(cpu_max) == affinity
