"""`${ENV_NAME}` references inside configured paths, e.g. `${CREDENTIALS_DIRECTORY}/ropo-apicode`.

systemd's `LoadCredential=` puts secrets in a folder whose path it gives in the
environment variable CREDENTIALS_DIRECTORY, so a secret file's path is only known at start.
Only the braced form `${NAME}` is expanded (a lone `$` stays as it is); a reference to a
variable that is not set is an error, never an empty string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_IN_PATH = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env_path(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """A path value with every `${NAME}` replaced by the variable's value; other values unchanged."""
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return value
    if "${" not in text:
        return value
    source = os.environ if env is None else env

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        found = source.get(name)
        if found is None or not found:
            raise ValueError(f"environment variable {name} (used in the path {text!r}) is not set")
        return found

    return ENV_IN_PATH.sub(replace, text)
