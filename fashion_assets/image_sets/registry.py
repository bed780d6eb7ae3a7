"""The query registry: ``queries/<name>.sql`` in the object store, one image set per query.

Keeping queries in the store (not in the Dagster instance) means a person, a notebook or another
service can add one by writing a file; the ``image_query_sensor`` notices it. Plain module: no
Dagster.
"""

from __future__ import annotations

from .. import layout
from ..core.storage import ObjectStore, md5_hex
from ..layout import QUERY_NAME, check_name  # noqa: F401  (the rule for names is the layout's)


class QueryNotFound(KeyError):
    def __str__(self) -> str:
        return f"no query named {self.args[0]!r}: add it with `fashion-assets query add {self.args[0]} --sql ...`"


class QueryRegistry:
    def __init__(self, store: ObjectStore):
        self.store = store

    def put(self, name: str, sql: str) -> None:
        self.store.put_bytes(layout.query(name), sql.strip().encode("utf-8") + b"\n", "application/sql")

    def get(self, name: str) -> str:
        key = layout.query(name)
        if not self.store.exists(key):
            raise QueryNotFound(name)
        return self.store.get_bytes(key).decode("utf-8")

    def remove(self, name: str) -> None:
        self.store.delete(layout.query(name))

    def checksums(self) -> dict[str, str | None]:
        """``{name: md5}`` of every well-named ``queries/<name>.sql``; other files are ignored."""
        found = {}
        for obj in self.store.list(layout.QUERIES):
            name = layout.query_name(obj.key)
            if name is not None:
                found[name] = obj.md5 or md5_hex(self.store.get_bytes(obj.key))
        return found

    def invalid_names(self) -> list[str]:
        """Files in ``queries/`` that cannot become a query (bad name or extension)."""
        return [obj.key.removeprefix(layout.QUERIES) for obj in self.store.list(layout.QUERIES)
                if layout.query_name(obj.key) is None]
