#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: OpenSSH's server and client
# (the SFTP tests run a real sshd and drive it with the real sftp client), PostgreSQL's server
# (the journal tests start a private cluster with its initdb and pg_ctl; the package's own
# cluster is not used), Chromium (the console's browser tests drive it with Playwright's Python
# package by its path; no browser is downloaded), a C compiler (the compiled XML record reader) and the package with its test extra. Safe to run again; skips what is
# already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=()
if ! command -v /usr/sbin/sshd >/dev/null || ! command -v sftp >/dev/null || ! command -v ssh-keygen >/dev/null; then
    PACKAGES+=(openssh-server openssh-client)
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    PACKAGES+=(postgresql)
fi
if ! command -v /usr/bin/chromium >/dev/null; then
    PACKAGES+=(chromium)
fi
# a C compiler and Python's headers build the compiled XML record reader (setup.py); without them
# the package installs without it, and .ci/run would say so
if ! command -v cc >/dev/null; then
    PACKAGES+=(gcc libc6-dev)
fi
if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; then
    PACKAGES+=(python3-dev)
fi
if [ "${#PACKAGES[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
