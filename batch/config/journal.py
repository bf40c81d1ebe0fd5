"""Where the journal is: a SQLite file (a path), or a PostgreSQL database (a libpq URI).

``journal: var/journal.sqlite3`` (relative to the configuration file) is the embedded default,
for one host. ``journal: postgresql://user@host:5432/dbname?sslmode=verify-full`` is a
PostgreSQL database that the instances on several hosts share. Its password is never written in
the YAML: the URI's password is ``${ENV_NAME}`` or absent, and then comes from
``journal_password_file`` or libpq's own ``PGPASSWORD`` / ``PGPASSFILE`` (``~/.pgpass``). Other
``${ENV_NAME}`` references in the URI (user, host, database) are expanded when the journal is
opened. The URI is shown with its password as ``***`` (``display``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from batch.config.envpath import expand_env_path
from batch.config.secrets import ENV_REFERENCE, SecretResolutionError, resolve_secret
from batch.redact import REDACTED

POSTGRES_SCHEMES = ("postgresql", "postgres")
# user[:password]@ in the authority of a URI (the password may hold anything but '@' and '/')
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@")


@dataclass(frozen=True)
class PostgresJournal:
    """A PostgreSQL journal: the libpq URI as written (``${NAME}`` references unresolved)."""

    uri: str

    @classmethod
    def parse(cls, text: str) -> PostgresJournal:
        """Check a ``postgresql://`` URI as written; ValueError (never quoting the URI) if wrong."""
        parts = urlsplit(text)
        if parts.scheme not in POSTGRES_SCHEMES:
            raise ValueError(f"journal: unsupported scheme {parts.scheme!r}: use a path (SQLite) "
                             "or postgresql://user@host:port/dbname")
        if parts.fragment:
            raise ValueError("journal: a postgresql:// URI takes no fragment (#...)")
        password = cls._password_of(text)
        if password is not None and not ENV_REFERENCE.match(password):
            raise ValueError("journal: a password in the postgresql:// URI is not accepted; write ${ENV_NAME} "
                             "in its place, or use journal_password_file, PGPASSWORD or PGPASSFILE")
        if any(key == "password" for key, _ in parse_qsl(parts.query, keep_blank_values=True)):
            raise ValueError("journal: a password in the URI's query is not accepted; use ${ENV_NAME} as the "
                             "URI's password, journal_password_file, PGPASSWORD or PGPASSFILE")
        return cls(text)

    @staticmethod
    def _password_of(uri: str) -> str | None:
        match = _USERINFO.match(uri)
        return None if match is None else match.group("password")

    @property
    def display(self) -> str:
        """The URI for messages and logs: a password reference, if any, shown as ***."""
        match = _USERINFO.match(self.uri)
        if match is None or match.group("password") is None:
            return self.uri
        return f"{match.group('scheme')}{match.group('user')}:{REDACTED}@{self.uri[match.end():]}"

    def resolve(self, password_file: Path | None) -> tuple[str, SecretStr | None]:
        """The URI to connect with (no password in it, ``${NAME}`` expanded) and the password:
        from the URI's ``${NAME}``, or ``password_file``, or None (libpq then reads PGPASSWORD or
        PGPASSFILE). Raises SecretResolutionError naming the variable or file, never a value."""
        match = _USERINFO.match(self.uri)
        reference = None if match is None else match.group("password")
        uri = self.uri
        if match is not None and reference is not None:
            uri = f"{match.group('scheme')}{match.group('user')}@{self.uri[match.end():]}"
        try:
            expanded = expand_env_path(uri)
        except ValueError as exc:
            raise SecretResolutionError(f"journal: {exc}".replace(f" (used in the path {uri!r})", "")) from None
        password = resolve_secret(None if reference is None else SecretStr(reference), password_file,
                                  field="journal_password")
        return str(expanded), password


def parse_journal(value: object) -> object:
    """The ``journal`` key before validation: a ``postgresql://`` URI becomes a PostgresJournal;
    any other text is a path (a URI of another scheme is refused)."""
    if isinstance(value, str) and "://" in value:
        return PostgresJournal.parse(value)
    return value
