#!/usr/bin/env bash
# Installs what the build and the end-to-end tests need from Debian's
# packages, if it is missing: pkg-config, libssl-dev and libcurl4-openssl-dev
# (librdkafka is built with TLS against the system's OpenSSL, and with
# libcurl for OAUTHBEARER's OpenID Connect token requests), stunnel4 (TLS in front of the
# tansu broker in tests/tests/e2e/kafka_tls.rs), PostgreSQL 15 (the analytics sink's real server), Prometheus
# Alertmanager (the alerting sink's real receiver), Prometheus (`promtool`
# checks the alert rules) and Chromium (the venue view's page, headless). Needs root (CI
# and these machines run as root); elsewhere, install them yourself.
set -euo pipefail

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
pkg-config --exists libcurl 2>/dev/null || need+=(libcurl4-openssl-dev)
command -v stunnel >/dev/null 2>&1 || need+=(stunnel4)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or apt-get install them)" >&2
  exit 1
fi
echo "installing from Debian: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package may start a cluster of its own; the tests start their own
# servers on free ports, so stop it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for c in /etc/postgresql/*/*; do
    [ -d "$c" ] || continue
    pg_ctlcluster "$(basename "$(dirname "$c")")" "$(basename "$c")" stop 2>/dev/null || true
  done
fi
# Likewise for the Prometheus services, where an init system started them.
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
  if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
