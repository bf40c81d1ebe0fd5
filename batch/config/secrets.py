"""Secrets in configuration: one way to write them, one resolution, the same rules for all.

The API code, a fixed API token, the SFTP password and the SFTP key passphrase are never
written literally in YAML. Each key (``apicode``, ``token``, ``password``, ``key_passphrase``)
takes ``${ENV_NAME}`` (the whole value), or its ``*_file`` twin a path to a file holding the
secret. The models keep only the reference; :func:`resolve_secret` reads it when the secret is
needed (a configuration can be checked on a machine that does not hold the secrets).

The rules, the same for every secret:

- the secret is the variable's value or the file's text with surrounding whitespace (and so the
  final line break) removed; it must not be empty, and must be one line;
- a secret file must be UTF-8 text;
- a secret file that group or others may read or write draws a warning (:func:`secret_file_warning`),
  from ``validate-config`` and in the service log at start and on reload;
- messages name the key and the variable or the file, never the value; a path that names no file
  is not shown either (it may be the secret itself, typed under the ``*_file`` key by mistake).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from batch.errors import ConfigurationError
from batch.fsutil import read_regular_file

ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
MAX_SECRET_FILE_BYTES = 64 * 1024  # a secret is one line; anything bigger is the wrong file


class SecretResolutionError(ValueError, ConfigurationError):
    """A secret reference could not be resolved. The message never holds the secret."""


def check_reference(value: object, field: str) -> SecretStr | None:
    """The validator for a secret key: `${ENV_NAME}` or nothing. The message never holds the value."""
    if value is None:
        return None
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(raw, str) or not ENV_REFERENCE.match(raw):
        raise ValueError(
            f"write {field} as ${{ENV_NAME}} (an environment variable) or use {field}_file; "
            "a literal secret is not allowed in configuration"
        )
    return SecretStr(raw)


def resolve_secret(
    reference: SecretStr | None,
    path: Path | None,
    *,
    field: str,
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """The secret `${ENV_NAME}` (`reference`) or the file `path` names; None when neither is given."""
    if reference is not None:
        match = ENV_REFERENCE.match(reference.get_secret_value())
        if match is None:  # the validators make this unreachable, kept as a guard
            raise SecretResolutionError(f"{field}: expected ${{ENV_NAME}}")
        name = match.group(1)
        value = (os.environ if env is None else env).get(name)
        if value is None:
            raise SecretResolutionError(f"{field}: environment variable {name} is not set")
        return _one_line(value, f"{field}: environment variable {name}")
    if path is not None:
        return _one_line(_read_secret_file(path, f"{field}_file"), f"{field}_file: {path}")
    return None


def _read_secret_file(path: Path, key: str) -> str:
    try:
        data = read_regular_file(path, MAX_SECRET_FILE_BYTES)
    except FileNotFoundError:
        # the path itself is not shown: it may be the secret, typed under the *_file key
        raise SecretResolutionError(f"{key}: cannot read the file it names: it does not exist") from None
    except OSError as exc:
        if not path.exists():
            raise SecretResolutionError(f"{key}: cannot read the file it names: {exc.strerror or exc}") from None
        raise SecretResolutionError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretResolutionError(f"{key}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretResolutionError(f"{key}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _one_line(value: str, where: str) -> SecretStr:
    secret = value.strip()
    if not secret:
        raise SecretResolutionError(f"{where} is empty")
    if "\n" in secret or "\r" in secret:
        raise SecretResolutionError(f"{where} holds more than one line: a secret is a single line")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in secret):
        raise SecretResolutionError(f"{where} holds control characters")
    return SecretStr(secret)


def secret_file_warning(path: Path | None, key: str) -> str | None:
    """A warning when group or others may read or write a secret file (as ssh says of private keys)."""
    if path is None:
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # reported by the resolution itself
    if mode & 0o077:
        return (f"{key}: {path} can be read or written by group or others (mode {mode:04o}); "
                f"make it readable by the service's user only: chmod 600 {path}")
    return None
