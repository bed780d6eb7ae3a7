"""The query registry: ``queries/<name>.sql`` in the object store, one image set per query.

Keeping queries in the store (not in the Dagster instance) means a person, a notebook or another
service can add one by writing a file; the ``image_query_sensor`` notices it. Anyone can write
anything there, so a file is checked as it is read: UTF-8 text, no larger than the sandbox's
``max_sql_bytes`` (a larger file is not even read to hash it). Plain module: no Dagster.
"""

from __future__ import annotations

from .. import layout
from ..core.storage import ObjectStore, md5_hex
from ..layout import QUERY_NAME, check_name  # noqa: F401  (the rule for names is the layout's)
from .sandbox import SandboxLimits, SqlRejected, check_sql_size

OVERSIZE = "oversize:"  # the checksum of a file too large to read: "oversize:<bytes>"


class QueryNotFound(KeyError):
    def __str__(self) -> str:
        return f"no query named {self.args[0]!r}: add it with `fashion-assets query add {self.args[0]} --sql ...`"


class QueryExists(ValueError):
    """``add`` without ``replace`` for a name that already has a query; says what is stored."""

    def __init__(self, name: str, stored: str):
        super().__init__(f"query {name!r} already exists ({stored}): pass --replace to replace it")
        self.name, self.stored = name, stored


class QueryUnreadable(SqlRejected):
    """A query file that is not a query's text: not UTF-8, or over the size limit."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,})"


class QueryRegistry:
    def __init__(self, store: ObjectStore, max_sql_bytes: int | None = None):
        """``max_sql_bytes``: default :meth:`SandboxLimits.from_env`."""
        self.store = store
        self.max_sql_bytes = max_sql_bytes if max_sql_bytes is not None else SandboxLimits.from_env().max_sql_bytes

    def put(self, name: str, sql: str) -> None:
        self.store.put_bytes(layout.query(name), sql.strip().encode("utf-8") + b"\n", "application/sql")

    def add(self, name: str, sql: str, replace: bool = False) -> str | None:
        """Store ``sql`` as a new query; over an existing one only with ``replace``, else
        :class:`QueryExists`. Returns what it replaced (``describe``), None for a new name.
        (Two adds of one name at the same moment can both find it absent: the later one wins.)"""
        stored = self.describe(name)
        if stored is not None and not replace:
            raise QueryExists(name, stored)
        self.put(name, sql)
        return stored

    def describe(self, name: str) -> str | None:
        """The stored ``queries/<name>.sql`` in one line: key, MD5 and first non-blank line (a file
        over the size limit is not read: its size instead); None when there is none."""
        key = layout.query(name)
        found = next((obj for obj in self.store.list(key) if obj.key == key), None)
        if found is None:
            return None
        if found.size > self.max_sql_bytes:
            return f"{key}, {found.size:,} bytes, over the size limit"
        data = self.store.get_bytes(key)
        text = data.decode("utf-8", "replace")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"{key}, MD5 {md5_hex(data)}, first line: {first if len(first) <= 80 else first[:77] + '...'}"

    def get(self, name: str) -> str:
        """The query's SQL; :class:`QueryUnreadable` (naming the file and why) when the file is
        over the size limit or not UTF-8."""
        key = layout.query(name)
        if not self.store.exists(key):
            raise QueryNotFound(name)
        data = self.store.get_bytes(key)
        try:
            check_sql_size(len(data), self.max_sql_bytes)
            return data.decode("utf-8")
        except SqlRejected as exc:
            raise QueryUnreadable(key, str(exc)) from None
        except UnicodeDecodeError as exc:
            raise QueryUnreadable(key, not_utf8(data, exc)) from None

    def remove(self, name: str) -> None:
        self.store.delete(layout.query(name))

    def checksums(self) -> dict[str, str | None]:
        """``{name: md5}`` of every well-named ``queries/<name>.sql``; other files are ignored. A
        file over the size limit is not read: its value is ``"oversize:<bytes>"``, which changes
        when its size does."""
        found = {}
        for obj in self.store.list(layout.QUERIES):
            name = layout.query_name(obj.key)
            if name is None:
                continue
            if obj.size > self.max_sql_bytes:
                found[name] = f"{OVERSIZE}{obj.size}"
            else:
                found[name] = obj.md5 or md5_hex(self.store.get_bytes(obj.key))
        return found

    def invalid_names(self) -> list[str]:
        """Files in ``queries/`` that cannot become a query (bad name or extension)."""
        return [obj.key.removeprefix(layout.QUERIES) for obj in self.store.list(layout.QUERIES)
                if layout.query_name(obj.key) is None]
