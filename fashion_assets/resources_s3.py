"""The S3 object store as a Dagster resource: dagster-aws's ``S3Resource`` with a store URL.

Its own module so that dagster-aws (about a second of import) loads only in processes that use an
S3 store; ``resources.store_from_env`` imports it when ``FASHION_STORE_URL`` is ``s3://...``, and
``fashion_assets.resources.S3StoreResource`` still names it.
"""

from typing import Any

from dagster_aws.s3 import S3PickleIOManager, S3Resource
from pydantic import Field, PrivateAttr

from .core.storage import ObjectStore, S3ObjectStore, parse_s3_url
from .resources import STORE_URL_ENV, ConfigurationError, ObjectStoreResource

__all__ = ["S3PickleIOManager", "S3StoreResource"]


class S3StoreResource(S3Resource, ObjectStoreResource):
    """A bucket and prefix on S3 or any S3-compatible store.

    Extends dagster-aws's ``S3Resource``, so all of its settings apply (``endpoint_url``,
    ``region_name``, ``profile_name``, credentials, ``max_attempts``); adds the store URL and a
    connection pool as large as the thread pool that shares the client.
    """

    url: str = Field(description=f"s3://bucket/prefix ({STORE_URL_ENV}).")
    max_concurrency: int = Field(default=32, description="Parallel S3 requests (threads and pooled connections).")
    _client: Any = PrivateAttr(default=None)

    def get_client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            config = Config(
                max_pool_connections=self.max_concurrency,
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=10,
                signature_version=UNSIGNED if self.use_unsigned_session else None,
            )
            session = boto3.session.Session(profile_name=self.profile_name)
            self._client = session.client(
                "s3",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                use_ssl=self.use_ssl,
                verify=self.verify,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                aws_session_token=self.aws_session_token,
                config=config,
            )
        return self._client

    def get_object_to_set_on_execution_context(self) -> Any:
        # S3Resource hands out its boto3 client in `context.resources` and `build_resources`;
        # this resource is used as a store, so hand out the resource itself, like the local one.
        return self

    def s3_client(self) -> Any:
        return self.get_client()

    def get_store(self) -> ObjectStore:
        try:
            bucket, prefix = parse_s3_url(self.url)
        except ValueError as exc:
            raise ConfigurationError(f"{STORE_URL_ENV}: {exc}") from None
        return S3ObjectStore(self.get_client(), bucket, prefix)
