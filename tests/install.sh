#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: OpenSSH's server and client
# (the SFTP tests run a real sshd and drive it with the real sftp client) and the package with
# its test extra. Safe to run again; skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v /usr/sbin/sshd >/dev/null || ! command -v sftp >/dev/null || ! command -v ssh-keygen >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
