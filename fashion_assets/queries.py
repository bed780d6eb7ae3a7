"""The query registry: ``queries/<name>.sql`` in the object store, one image set per query.

Keeping queries in the store (not in the Dagster instance) means a person, a notebook or another
service can add one by writing a file; the ``image_query_sensor`` notices it. Plain module: no
Dagster.
"""

from __future__ import annotations

import re

from .storage import ObjectStore, md5_hex

PREFIX = "queries/"
# A slug: also a Dagster partition key and a store folder name, so kept plain.
QUERY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


class QueryNotFound(KeyError):
    def __str__(self) -> str:
        return f"no query named {self.args[0]!r}: add it with `fashion-assets query add {self.args[0]} --sql ...`"


def check_name(name: str) -> str:
    if not QUERY_NAME.fullmatch(name):
        raise ValueError(
            f"query name {name!r} must be a slug: lower-case letters, digits and '-', 1-64 characters, "
            "not starting or ending with '-'"
        )
    return name


def query_key(name: str) -> str:
    return f"{PREFIX}{check_name(name)}.sql"


def image_set_prefix(name: str) -> str:
    """Where a query's image set lives: ``image-sets/<name>/``."""
    return f"image-sets/{check_name(name)}/"


class QueryRegistry:
    def __init__(self, store: ObjectStore):
        self.store = store

    def put(self, name: str, sql: str) -> None:
        self.store.put_bytes(query_key(name), sql.strip().encode("utf-8") + b"\n", "application/sql")

    def get(self, name: str) -> str:
        key = query_key(name)
        if not self.store.exists(key):
            raise QueryNotFound(name)
        return self.store.get_bytes(key).decode("utf-8")

    def remove(self, name: str) -> None:
        self.store.delete(query_key(name))

    def checksums(self) -> dict[str, str | None]:
        """``{name: md5}`` of every well-named ``queries/<name>.sql``; other files are ignored."""
        found = {}
        for obj in self.store.list(PREFIX):
            filename = obj.key[len(PREFIX):]
            if "/" in filename or not filename.endswith(".sql"):
                continue
            name = filename[: -len(".sql")]
            if QUERY_NAME.fullmatch(name):
                found[name] = obj.md5 or md5_hex(self.store.get_bytes(obj.key))
        return found

    def invalid_names(self) -> list[str]:
        """Files in ``queries/`` that cannot become a query (bad name or extension)."""
        names = []
        for obj in self.store.list(PREFIX):
            filename = obj.key[len(PREFIX):]
            if "/" in filename or not filename.endswith(".sql") or not QUERY_NAME.fullmatch(filename[:-4]):
                names.append(filename)
        return names
