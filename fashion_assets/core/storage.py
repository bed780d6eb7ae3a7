"""Object stores: one small interface, a local-directory and an S3 implementation, and the
bulk operations built on it.

Both hold the same keys (``fashion_assets.layout``), so every stage is written once against
:class:`ObjectStore` and runs unchanged on a laptop and on S3. Plain module: no Dagster; the
Dagster resources in ``fashion_assets.resources`` construct these.

Why this module is long: it is the interface and both of its implementations side by side
(they must keep the same contract, listings included: sizes always, MD5s only where cheap and
reliable), plus the few bulk helpers built on it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .database import scrub
from .parallel import bounded_map

# An MPO (a camera JPEG with a second picture) is served as the JPEG it starts with.
CONTENT_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                 "WEBP": "image/webp", "BMP": "image/bmp"}


class StoreError(RuntimeError):
    """A store that cannot be used as configured (missing bucket, unwritable folder...)."""


class EndpointUnreachable(StoreError):
    """The S3 endpoint did not answer (wrong host or port, no network): the endpoint is what to
    fix, not the bucket."""


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing reports it: no listing reads or hashes an object's bytes."""

    key: str
    size: int  # bytes, as the store reports them (``stat()`` locally, ``Size`` on S3)
    # Hex MD5 of the content where the store knows it *cheaply and reliably*; None means "not
    # known cheaply", never "changed". A local folder always says None (knowing would mean
    # reading every file); S3 gives a plain single-part ETag, and None for a multipart ETag
    # ("<hex>-N") or in a bucket whose default encryption is SSE-KMS (ETags there are not
    # MD5s). Change detection therefore rests on recorded state (the ``product_images`` table,
    # a set's manifest) plus ``size``; a non-None ``md5`` is only an extra check against it.
    md5: str | None


def holds_recorded(obj: StoredObject | None, md5: str | None, size: int | None) -> bool:
    """Whether ``obj`` (from a listing; None: not there) still holds what was recorded when it
    was written, ``md5`` and ``size`` (from the ``product_images`` table or a set's manifest):
    it is there, its size is the recorded one, and its MD5, where the store knows it cheaply,
    is the recorded one. Without a listing MD5 (a local folder, a multipart or SSE-KMS object
    on S3) a replacement of the same size behind the project's back goes unnoticed: the
    project's own writes always update the record."""
    return (obj is not None and md5 is not None and size is not None
            and obj.size == size and obj.md5 in (None, md5))


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """What the assets need from an object store; keys are '/'-separated relative paths."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store is, for people (``s3://bucket/prefix`` or a folder path)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where one object (or, with a trailing '/', a folder) is, for people and other tools."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreError` if the store cannot be used (fail fast, before any work)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix``, in key order, with its size and, where
        the store knows it without reading the object, its MD5 (see :class:`StoredObject`)."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy inside the store without moving the bytes through this process where possible."""

    def remove_temporary(self, prefix: str, recursive: bool = False) -> int:
        """Delete what writes killed in flight left in the folder ``prefix`` (ending in '/'; with
        ``recursive``, in its subfolders too) or of the one object ``prefix`` (nothing on a store
        whose writes are atomic requests); returns how many. Only for the partition's lease
        holder, or for whoever deletes the whole folder."""
        return 0


class LocalObjectStore(ObjectStore):
    """A folder on disk. Writes are atomic (temporary file + rename), so a reader or a crash
    never sees half an object."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def uri(self, key: str) -> str:
        return str(self._path(key.rstrip("/"))) + ("/" if key.endswith("/") else "")

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write to folder {self.root}: {exc.strerror or exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        # Walk only the folder that holds the prefix, not the whole store.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):  # temporary files of writes in flight
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            # stat() only: reading and hashing every file made each listing cost a full read of
            # the folder. A file removed since the walk is simply not listed.
            try:
                size = (self.root / key).stat().st_size
            except FileNotFoundError:
                continue
            yield StoredObject(key=key, size=size, md5=None)

    def copy(self, src_key: str, dst_key: str) -> None:
        src, dst = self._path(src_key), self._path(dst_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            try:
                # A hard link costs no space and no copy; fall back to a copy across file systems.
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            # When dst is already a link to the same file, rename() does nothing and leaves tmp.
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def remove_temporary(self, prefix: str, recursive: bool = False) -> int:
        """The hidden ``.<name>.<...>`` files of writes and copies that a killed process left: in
        the folder ``prefix`` when it ends in '/' (in its subfolders too with ``recursive``; not
        by default, since other assets may be writing there), else those of the one object
        ``prefix``."""
        folder, _, name = prefix.rpartition("/")
        folder_path = self.root / folder if folder else self.root
        if not folder_path.is_dir():
            return 0
        removed = 0
        walked = os.walk(folder_path) if recursive else [(folder_path, None, None)]
        for dirpath, _dirnames, _files in walked:
            with os.scandir(dirpath) as entries:
                for entry in entries:
                    if (entry.is_file(follow_symlinks=False) and entry.name.startswith(f".{name}")
                            and not entry.name.startswith(".write-check-")):
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
        return removed


class S3ObjectStore(ObjectStore):
    """A bucket and key prefix on S3 or any S3-compatible store (MinIO, Ceph...), through a
    boto3 client. The client is thread-safe; callers fan out over a thread pool."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", etags_are_md5: bool | None = None):
        """``etags_are_md5``: whether a single-part ETag of this bucket is the object's MD5;
        None (the default) asks the bucket once, on the first listing (see
        :meth:`_etags_are_md5`)."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.etags_are_md5 = etags_are_md5

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key.rstrip('/'))}" + ("/" if key.endswith("/") else "")

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A GET URL for one object that works without credentials for ``expires_s`` seconds
        (handing images to a labelling tool)."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=int(expires_s))

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            reason = {"404": "does not exist", "NoSuchBucket": "does not exist", "403": "access denied"}
            raise StoreError(f"bucket {self.bucket!r} {reason.get(code, f'is not usable ({code})')}") from exc
        except (BotoConnectionError, HTTPClientError) as exc:  # botocore names the endpoint URL: masked
            raise EndpointUnreachable(
                f"cannot reach the S3 endpoint for bucket {self.bucket!r}: {scrub(str(exc))}") from exc
        except NoCredentialsError:
            raise StoreError(f"no S3 credentials for bucket {self.bucket!r}: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or give the pod a role") from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot use bucket {self.bucket!r}: {scrub(str(exc))}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        # Content-MD5 makes S3 reject a body damaged in transit instead of storing it.
        md5_b64 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=md5_b64, **extra)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _etags_are_md5(self) -> bool:
        """Whether a single-part ETag here is the object's MD5: not where the bucket encrypts
        with KMS by default (SSE-KMS / DSSE-KMS ETags are not MD5s, and a listing cannot tell
        such an object from another). The objects this project writes get the bucket's default
        encryption, so one ``GetBucketEncryption`` per store answers for all of them. When the
        bucket will not say (no permission, a store without the call), assume not: the MD5 is
        then unknown, which costs only the extra check, never a rewrite."""
        if self.etags_are_md5 is None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                rules = self.client.get_bucket_encryption(Bucket=self.bucket)[
                    "ServerSideEncryptionConfiguration"].get("Rules", [])
                algorithms = {r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "") for r in rules}
                self.etags_are_md5 = not any("kms" in a.lower() for a in algorithms)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                self.etags_are_md5 = code == "ServerSideEncryptionConfigurationNotFoundError"
            except BotoCoreError:
                self.etags_are_md5 = False
        return self.etags_are_md5

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """``md5`` is the ETag where it is one: a plain 32-hex-digit ETag (a single-part upload
        or a server-side copy) in a bucket without default KMS encryption; None for a multipart
        ETag (``"<hex>-N"``) and in a KMS bucket."""
        paginator = self.client.get_paginator("list_objects_v2")
        trust: bool | None = None
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                etag = obj.get("ETag", "").strip('"').lower()
                md5 = None
                if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
                    if trust is None:
                        trust = self._etags_are_md5()
                    md5 = etag if trust else None
                yield StoredObject(key=obj["Key"][len(self.prefix) :], size=obj["Size"], md5=md5)

    def copy(self, src_key: str, dst_key: str) -> None:
        # Server-side copy: the bytes never leave S3.
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self._key(dst_key),
            CopySource={"Bucket": self.bucket, "Key": self._key(src_key)},
        )


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def delete_keys(store: ObjectStore, keys: Iterable[str], workers: int = 16) -> int:
    """Delete ``keys`` on ``workers`` threads; returns how many."""
    return sum(1 for _ in bounded_map(store.delete, keys, workers))


def remove_prefix(store: ObjectStore, prefix: str, workers: int = 16) -> int:
    """Delete every object under ``prefix``; returns how many."""
    return delete_keys(store, [obj.key for obj in store.list(prefix)], workers)
