#!/usr/bin/env bash
# Prints a PostgreSQL URL for the tests. Uses $NEXUS_TEST_POSTGRES_URL when given; otherwise
# starts a private PostgreSQL (Debian's package) in .nexus/pg on 127.0.0.1:55432.
#   scripts/test-postgres.sh          start (if needed) and print the URL
#   scripts/test-postgres.sh stop     stop the private server
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${NEXUS_TEST_POSTGRES_URL:-}" ]; then echo "$NEXUS_TEST_POSTGRES_URL"; exit 0; fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || { echo "PostgreSQL is not installed (scripts/install-deps.sh --test)" >&2; exit 1; }
DIR=$(pwd)/.nexus/pg
PORTFILE=$DIR/port
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "${1:-}" = "stop" ]; then
  [ -d "$DIR/data" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
  exit 0
fi
mkdir -p "$DIR"
# the server runs as postgres: it must be able to pass through .nexus (a test process with
# umask 077 may have made it 0700)
chmod o+x "$(dirname "$DIR")"
[ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
if [ -f "$PORTFILE" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  PORT=$(cat "$PORTFILE")
else
  # a free loopback port (another checkout's test server may hold the usual one)
  PORT=${NEXUS_TEST_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  echo "$PORT" > "$PORTFILE"
fi
if [ ! -f "$DIR/data/PG_VERSION" ]; then
  as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! as_pg "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
fi
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='nexus_test'" | grep -q 1 \
  || as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres nexus_test
echo "postgresql+asyncpg://postgres@127.0.0.1:$PORT/nexus_test"
