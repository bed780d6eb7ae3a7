import pytest

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
