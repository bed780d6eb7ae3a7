"""The catalog database: engines, URL masking (of every secret a URL can hold), the schema, and
the one way tables are written.

SQLAlchemy Core, one code path for SQLite (the embedded default) and PostgreSQL. Each table is
defined by the stage that owns it (``catalog.tables``, ``predictions.table``) on the one
``metadata`` here, and created by the code (``ensure_schema``), so no manual DDL step exists.
Plain module: no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import make_url

metadata = sa.MetaData()

INSERT_CHUNK = 5_000


# Query-string parameters whose value is a secret (libpq's ``password`` and ``sslpassword``, and
# what drivers and S3-style endpoints call a token, key, signature or credential). Matched on the
# lower-cased name, anywhere in it: masking a harmless value costs nothing, showing a secret does.
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|signature|credential|auth")
MASK = "***"
# A URL inside free text (an error message): scheme, then everything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")


def is_secret_parameter(name: str) -> bool:
    return bool(_SECRET_PARAMETER.search(name.lower()))


def _masked_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={MASK if is_secret_parameter(k) else quote(v, safe='/:,@')}"
                    for k, v in pairs)


def masked(url: str | sa.URL) -> str:
    """The database URL with every secret replaced by ``***``: the password, and any query-string
    parameter that carries one (``?password=...``, which libpq accepts as well as the
    ``user:password@`` form; ``sslpassword``...). The only form logs, metadata, error messages and
    the UI may show."""
    try:
        parsed = make_url(url)
        shown = parsed.set(query={}).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it that could be a secret
        return "<unparseable database URL>"
    pairs = [(k, v) for k, values in parsed.query.items() for v in ((values,) if isinstance(values, str) else values)]
    return shown + ("?" + _masked_query(pairs) if pairs else "")


def masked_endpoint(url: str | None) -> str:
    """Any other URL (an S3 endpoint) with its secrets masked: the password of ``user:password@``
    and secret-bearing query parameters (``X-Amz-Signature``, ``X-Amz-Credential``, tokens)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if has_password else f"{userinfo}@{host}"
        query = _masked_query(parse_qsl(parts.query, keep_blank_values=True)) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def secrets_of(url: str | sa.URL | None) -> list[str]:
    """The secret values a URL holds (password, secret query parameters), to scrub them from
    text that might repeat them without the URL around them (a driver's error message)."""
    if not url:
        return []
    found = []
    try:
        parsed = make_url(url)
        found.append(parsed.password)
        for name, values in parsed.query.items():
            if is_secret_parameter(name):
                found.extend((values,) if isinstance(values, str) else values)
    except Exception:
        try:
            parts = urlsplit(str(url))
            found.append(parts.password)
            found.extend(v for k, v in parse_qsl(parts.query) if is_secret_parameter(k))
        except ValueError:
            pass
    return sorted({str(s) for s in found if s}, key=len, reverse=True)


# Shorter values are not searched for in free text: replacing every "p" of a message would make it
# unreadable, and a one-to-three-character password protects nothing anyway.
SCRUB_MIN_CHARS = 4


def scrub(text: str, *urls: str | sa.URL | None) -> str:
    """``text`` with every URL in it masked, and every secret of ``urls`` (of at least
    ``SCRUB_MIN_CHARS`` characters) replaced by ``***`` wherever it appears, raw or
    percent-encoded."""
    text = _URL_IN_TEXT.sub(lambda m: masked_endpoint(m.group(0)), text)
    for url in urls:
        for secret in (s for s in secrets_of(url) if len(s) >= SCRUB_MIN_CHARS):
            for form in {secret, quote(secret, safe=""), quote_plus(secret, safe="")}:
                text = text.replace(form, MASK)
    return text


def create_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        # Fail in seconds, not minutes, when the server is not there.
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from pathlib import Path

        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}  # wait for another writer instead of failing
    return sa.create_engine(parsed, **kwargs)


def ensure_schema(engine: sa.Engine) -> None:
    """Create every table registered on ``metadata`` that is not there yet, and add the nullable
    columns a newer version defines to a table an older version created (the only migration
    the schema has needed: columns only ever get added)."""
    metadata.create_all(engine, checkfirst=True)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        for column in missing:
            if not column.nullable:
                raise RuntimeError(f"table {table.name} lacks column {column.name}, which cannot be added to "
                                   "existing rows: drop the table and materialise it again")
            with engine.begin() as conn:
                column_type = column.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {column_type}'))


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def replace_rows(
    conn: sa.Connection, table: sa.Table, rows: Iterable[dict], on_chunk=None, where: sa.ColumnElement | None = None
) -> int:
    """Replace every row of ``table`` (or those matching ``where``) with ``rows`` inside the
    caller's transaction.

    DELETE + INSERT in one transaction keeps the table, its indexes and grants, and readers see
    the old rows until COMMIT; if anything fails the transaction rolls back to the previous data.
    """
    conn.execute(table.delete() if where is None else table.delete().where(where))
    written = 0
    for chunk in _chunks(rows, INSERT_CHUNK):
        conn.execute(table.insert(), chunk)
        written += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
    return written
