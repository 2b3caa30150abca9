#!/bin/bash
# Container health check: GET /healthz on the switch's operator port, healthy only on a 200
# (the switch answers 503 once its ledger has stopped on a storage failure).
#
# Why not curl: it would add libcurl and a dozen libraries (and their CVE stream) to the slim
# image, for one plain-HTTP request to localhost. bash is already in
# debian:bookworm-slim (an Essential package) and Debian builds it with /dev/tcp redirections.
# Docker's HEALTHCHECK --timeout bounds a server that accepts but never answers.
#
# The port is the container config's `[operator] http_listen` (0.0.0.0:9464). If you mount a
# config that moves it, set SWITCH_HEALTHCHECK_PORT in the container's environment to match.
set -u
port="${SWITCH_HEALTHCHECK_PORT:-9464}"

exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3 || exit 1
# Status line: "HTTP/1.1 200 OK\r".
IFS=' ' read -r _version code _reason <&3 || exit 1
code="${code%$'\r'}"
# Read the rest before closing, so the server sees an orderly close rather than a reset (and logs
# nothing every 10 s). Bounded per line in case a server ignores "Connection: close".
while IFS= read -r -t 1 _line <&3; do :; done
[ "$code" = "200" ]
