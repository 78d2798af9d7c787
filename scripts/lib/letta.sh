# shellcheck shell=bash
# Sourced by scripts/test: a real Letta 0.16.8 server for the tests, on its own PostgreSQL.
#
# install_letta  installs, once, into $letta_home (under LETTA_MATRIX_TEST_CACHE, default
#                ~/.cache/letta-matrix), everything from PyPI and nothing outside that folder:
#                  tool/        uv alone (python3 -m pip install --target tool uv==$LETTA_UV_VERSION)
#                  venv/        a Python 3.11 venv made by uv: letta[server]==$LETTA_VERSION, the
#                               PostgreSQL drivers Letta imports (asyncpg, pg8000, pgvector) and
#                               pgserver==$LETTA_PGSERVER_VERSION (PostgreSQL 16 with pgvector, in a
#                               wheel), resolved as PyPI stood on $LETTA_EXCLUDE_NEWER (~800 MB)
#                  letta-$LETTA_VERSION.tar.gz, migrations/
#                               Letta's sdist and its alembic/ + alembic.ini (the wheel has none)
#                  uv-cache/    uv's downloads, so that a reinstall downloads little
#                  installed    the stamp, written last: without it (or with other versions in
#                               it) the venv is made again
# launch_letta   a fresh PostgreSQL in a new dir under $letta_home/runs, Letta's migrations, then
#                `letta server --secure` on a free port of 127.0.0.1 in the background; exports
#                LETTA_MATRIX_TEST_LETTA_URL, LETTA_MATRIX_TEST_LETTA_TOKEN (the bearer token the
#                server demands), LETTA_MATRIX_TEST_LETTA_LOG (the server's log) and
#                LETTA_MATRIX_TEST_LETTA_PYTHON (its venv's python)
# wait_letta     waits for /v1/health/ (LETTA_MATRIX_TEST_LETTA_START_TIMEOUT, default 1200 s)
# start_letta    launch_letta then wait_letta
# stop_letta     stops the server and its PostgreSQL and removes the run's dir (EXIT trap);
#                runs whose shell died without it are cleaned by the next launch_letta
LETTA_VERSION=0.16.8
LETTA_UV_VERSION=0.13.9
LETTA_PGSERVER_VERSION=0.1.4
# Letta pins few of its ~250 dependencies; today's versions of some break it at import (mcp vs
# pydantic, fastmcp vs mcp). Resolve as PyPI stood on this day.
LETTA_EXCLUDE_NEWER=2026-05-20
letta_cache=${LETTA_MATRIX_TEST_CACHE:-$HOME/.cache/letta-matrix}
letta_home=$letta_cache/letta-$LETTA_VERSION
letta_venv=$letta_home/venv
letta_stamp=$letta_home/installed
letta_run_dir=
letta_server_pid=
letta_launched_at=0

_letta_want() {
    printf 'letta %s uv %s pgserver %s exclude-newer %s bytecode\n' \
        "$LETTA_VERSION" "$LETTA_UV_VERSION" "$LETTA_PGSERVER_VERSION" "$LETTA_EXCLUDE_NEWER"
}

_letta_installed() {
    [ -f "$letta_stamp" ] && [ "$(cat "$letta_stamp")" = "$(_letta_want)" ] &&
        [ -x "$letta_venv/bin/letta" ] && [ -f "$letta_home/migrations/alembic.ini" ]
}

# Runs "$@" with its output in $letta_home/install.log; shows the log's tail when it fails.
_letta_logged() {
    local status=0 start=$SECONDS
    printf '$ %s\n' "$*" >>"$letta_home/install.log"
    "$@" >>"$letta_home/install.log" 2>&1 || status=$?
    printf '(exit %s after %ss)\n' "$status" $((SECONDS - start)) >>"$letta_home/install.log"
    if [ "$status" != 0 ]; then
        # shellcheck disable=SC2016 # the backquotes are text
        printf 'letta install: `%s` failed (%s); the end of %s:\n' "$*" "$status" "$letta_home/install.log" >&2
        tail -n 30 "$letta_home/install.log" >&2
    fi
    return "$status"
}

install_letta() {
    mkdir -p "$letta_home" || return 1
    _letta_installed && return 0
    local lock
    exec {lock}>"$letta_home/lock"
    # Another run may be installing into the same cache: wait for it, then look again.
    flock "$lock"
    if _letta_installed; then
        exec {lock}>&-
        return 0
    fi
    local status=0
    _install_letta_locked || status=$?
    exec {lock}>&-
    return "$status"
}

_install_letta_locked() {
    command -v python3.11 >/dev/null || { echo "Letta's venv needs python3.11 on PATH" >&2; return 1; }
    rm -f "$letta_stamp" "$letta_home/install.log"
    local uv=$letta_home/tool/bin/uv
    if [ "$("$uv" --version 2>/dev/null | cut -d' ' -f1-2)" != "uv $LETTA_UV_VERSION" ]; then
        printf 'installing uv %s into %s\n' "$LETTA_UV_VERSION" "$letta_home/tool"
        rm -rf "$letta_home/tool"
        _letta_logged python3 -m pip install --disable-pip-version-check --no-warn-script-location \
            --target "$letta_home/tool" "uv==$LETTA_UV_VERSION" || return 1
    fi
    printf 'installing letta %s and pgserver %s into %s (about 1 GB; a few minutes the first time)\n' \
        "$LETTA_VERSION" "$LETTA_PGSERVER_VERSION" "$letta_venv"
    rm -rf "$letta_venv"
    local -x UV_CACHE_DIR=$letta_home/uv-cache
    _letta_logged "$uv" venv --python python3.11 --no-python-downloads "$letta_venv" || return 1
    # `letta[postgres]` would also build psycopg2 from source (pg_config and a compiler needed),
    # which Letta never imports: take the three drivers it does import instead.
    local packages=("letta[server]==$LETTA_VERSION" asyncpg pg8000 pgvector "pgserver==$LETTA_PGSERVER_VERSION")
    # From uv's cache alone when it holds everything (seconds), else from PyPI. Bytecode is
    # compiled here, once, while nothing else runs: otherwise the first server start compiles
    # Letta's thousands of modules while `cargo build` takes both cores, which on a fresh CI
    # machine took it past the start timeout.
    local options=(--python "$letta_venv/bin/python" --no-python-downloads --compile-bytecode
        --exclude-newer "$LETTA_EXCLUDE_NEWER")
    "$uv" pip install --offline "${options[@]}" "${packages[@]}" >>"$letta_home/install.log" 2>&1 ||
        _letta_logged "$uv" pip install "${options[@]}" "${packages[@]}" || return 1
    local sdist=$letta_home/letta-$LETTA_VERSION.tar.gz
    if [ ! -f "$sdist" ]; then
        printf 'fetching the letta %s sdist (its migrations) into %s\n' "$LETTA_VERSION" "$letta_home"
        local download
        download=$(mktemp -d "$letta_home/download.XXXXXX") || return 1
        _letta_logged python3 -m pip download --disable-pip-version-check --no-deps --no-binary letta \
            -d "$download" "letta==$LETTA_VERSION" || { rm -rf "$download"; return 1; }
        mv "$download/letta-$LETTA_VERSION.tar.gz" "$sdist"
        rm -rf "$download"
    fi
    rm -rf "$letta_home/migrations" "$letta_home/migrations.tmp"
    mkdir -p "$letta_home/migrations.tmp"
    _letta_logged tar -xzf "$sdist" -C "$letta_home/migrations.tmp" --strip-components=1 \
        "letta-$LETTA_VERSION/alembic" "letta-$LETTA_VERSION/alembic.ini" || return 1
    mv "$letta_home/migrations.tmp" "$letta_home/migrations"
    local version
    version=$("$letta_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("letta"))' 2>/dev/null)
    if [ "$version" != "$LETTA_VERSION" ] || [ ! -x "$letta_venv/bin/letta" ]; then
        echo "letta $LETTA_VERSION is not in $letta_venv after its install" >&2
        return 1
    fi
    _letta_want >"$letta_stamp"
}

# The run's processes: pgserver's PostgreSQL binaries, run directly. pgserver's own Python
# wrapper, as root, adds a system user and opens up (chmod go+rx) every folder above its data dir
# and above its binaries, $HOME included. PostgreSQL refuses to run as root, so as root it runs
# in a user namespace where our uid shows as nobody's: it can use root's files, makes files that
# root owns, and needs no user or permission changed.
_letta_pg() {
    local bin=$1
    shift
    if [ "$(id -u)" = 0 ]; then
        unshare --user --map-user=65534 --map-group=65534 "$letta_pg_bin/$bin" "$@"
    else
        "$letta_pg_bin/$bin" "$@"
    fi
}

# Stops a process of a run if it is alive and still the run's (its command line or its
# environment names the run's dir: a pid may have been reused), waiting up to 10 s before SIGKILL.
_letta_kill_from() {
    local pid=$1 dir=$2 signal=${3:-TERM} target=$1
    _letta_alive "$pid" || return 0
    # (No pipe into grep -q here: under pipefail, its early exit would make the match a failure.)
    local seen
    seen=$({ tr '\0' '\n' <"/proc/$pid/cmdline" && tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null) || true
    case $seen in
        *"$dir"*) ;;
        *) return 0 ;;
    esac
    # "group": the pid leads a process group (setsid), all of which is signalled.
    [ "${4:-}" != group ] || target=-$pid
    kill "-$signal" -- "$target" 2>/dev/null || return 0
    local _
    for _ in $(seq 100); do
        _letta_alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL -- "$target" 2>/dev/null || true
}

# Running: a zombie (dead, not yet reaped) is not.
_letta_alive() {
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# Stops what the run in dir $1 started and removes the dir.
_letta_stop_run() {
    local dir=$1
    _letta_kill_from "$(cat "$dir/letta.pid" 2>/dev/null)" "$dir" TERM group
    # SIGINT is PostgreSQL's fast shutdown.
    _letta_kill_from "$(head -n 1 "$dir/pg/postmaster.pid" 2>/dev/null)" "$dir" INT
    rm -rf "$dir"
}

# A process's pid and start time: unlike a pid alone, never the same for two processes.
letta_process_token() {
    printf '%s %s\n' "$1" "$(cut -d' ' -f22 "/proc/$1/stat")"
}

# Whether the process of a token from letta_process_token still runs.
letta_process_alive() {
    local pid=${1%% *}
    [ -r "/proc/$pid/stat" ] && [ "$(letta_process_token "$pid" 2>/dev/null)" = "$1" ]
}

# Runs whose owner (the shell that started them) is gone were killed before their cleanup.
_letta_reap_dead_runs() {
    local dir owner
    for dir in "$letta_home"/runs/run.*; do
        [ -d "$dir" ] || continue
        owner=$(cat "$dir/owner" 2>/dev/null) || owner=
        if [ -n "$owner" ] && letta_process_alive "$owner"; then
            continue
        fi
        # A dir without an owner yet may be a run starting this very moment: leave it an hour.
        if [ -z "$owner" ] && [ -z "$(find "$dir" -maxdepth 0 -mmin +60)" ]; then
            continue
        fi
        printf 'removing the Letta run %s left by a run that no longer exists\n' "$dir"
        _letta_stop_run "$dir"
    done
    # Server logs kept by failed runs (stop_letta PATH) go after a week.
    find "$letta_home" -maxdepth 1 -name 'letta-*.log' -mtime +7 -delete 2>/dev/null || true
}

# Starts PostgreSQL, migrates it, and starts the server; does not wait for it (see wait_letta).
launch_letta() {
    letta_pg_bin=$letta_venv/lib/python3.11/site-packages/pgserver/pginstall/bin
    [ -x "$letta_pg_bin/postgres" ] || { echo "no PostgreSQL in $letta_venv: run install_letta" >&2; return 1; }
    if [ "$(id -u)" = 0 ] && ! unshare --user --map-user=65534 --map-group=65534 true 2>/dev/null; then
        echo "as root, Letta's PostgreSQL runs in a user namespace (unshare --user), which this machine refuses: run as another user" >&2
        return 1
    fi
    mkdir -p "$letta_home/runs"
    _letta_reap_dead_runs
    letta_run_dir=$(mktemp -d "$letta_home/runs/run.XXXXXX") || return 1
    letta_process_token $$ >"$letta_run_dir/owner"
    local socket_dir=$letta_run_dir
    # A unix socket's path has at most 107 bytes.
    if [ ${#socket_dir} -gt 90 ]; then
        socket_dir=$(mktemp -d /tmp/letta-pg.XXXXXX) || return 1
        ln -s "$socket_dir" "$letta_run_dir/socket"
    fi
    local log=$letta_run_dir/setup.log
    mkdir -p "$letta_run_dir/home"
    _letta_pg initdb -D "$letta_run_dir/pg" -U root --auth=trust --encoding=utf8 --no-sync >>"$log" 2>&1 &&
        _letta_pg pg_ctl -D "$letta_run_dir/pg" -w -t 60 -l "$letta_run_dir/postgres.log" \
            -o "-h '' -k $socket_dir -c fsync=off -c full_page_writes=off" start >>"$log" 2>&1 &&
        "$letta_pg_bin/psql" -h "$socket_dir" -U root -d postgres -qc 'CREATE DATABASE root' >>"$log" 2>&1 &&
        "$letta_pg_bin/psql" -h "$socket_dir" -U root -d root -qc 'CREATE EXTENSION vector' >>"$log" 2>&1 || {
        printf "Letta's PostgreSQL did not start; %s and %s say:\n" "$log" "$letta_run_dir/postgres.log" >&2
        tail -n 20 "$log" "$letta_run_dir/postgres.log" >&2
        return 1
    }
    letta_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    letta_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    export LETTA_MATRIX_TEST_LETTA_URL=http://127.0.0.1:$letta_port
    export LETTA_MATRIX_TEST_LETTA_TOKEN=$letta_token
    export LETTA_MATRIX_TEST_LETTA_LOG=$letta_run_dir/letta.log
    # Letta's own Python, whose `mcp` package is the MCP client Letta uses (tests drive it).
    export LETTA_MATRIX_TEST_LETTA_PYTHON=$letta_venv/bin/python
    # Migrations then the server, in the background, in a session of their own (stop_letta ends
    # the whole group). Migrations: pg8000 reaches a unix socket by its path; the server: asyncpg
    # by its dir. --secure: every route but /v1/health/ and /v1/ready/ wants
    # `Authorization: Bearer TOKEN`. OPENAI_API_KEY: any value (Letta wants one for the openai
    # endpoint type; each test agent names its own model endpoint). OPENAI_API_BASE: a closed local
    # port, so that Letta's start-up model listing fails at once instead of reaching out. No
    # SENTRY_DSN, no OTEL endpoint, no Datadog: Letta sends no telemetry.
    letta_launched_at=$SECONDS
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid env -u SENTRY_DSN -u OTEL_EXPORTER_OTLP_ENDPOINT -u LETTA_OTEL_EXPORTER_OTLP_ENDPOINT \
        HOME="$letta_run_dir/home" \
        LETTA_PG_URI="postgresql://root@localhost/root?host=$socket_dir" \
        LETTA_SERVER_PASSWORD="$letta_token" \
        OPENAI_API_KEY=standin OPENAI_API_BASE=http://127.0.0.1:9/v1 \
        LETTA_TELEMETRY_ENABLE_DATADOG=false \
        bash -c 'cd "$1/migrations" && LETTA_PG_URI=$4 "$2/bin/alembic" upgrade head >>"$3/setup.log" 2>&1 ||
                     { echo "Letta migrations failed: see $3/setup.log"; exit 1; }
                 cd "$3/home" && exec "$2/bin/letta" server --host 127.0.0.1 --port "$5" --secure' \
        letta-run "$letta_home" "$letta_venv" "$letta_run_dir" \
        "postgresql://root@localhost/root?unix_sock=$socket_dir/.s.PGSQL.5432" "$letta_port" \
        </dev/null >"$LETTA_MATRIX_TEST_LETTA_LOG" 2>&1 &
    letta_server_pid=$!
    echo "$letta_server_pid" >"$letta_run_dir/letta.pid"
}

# Waits until the server launched by launch_letta answers /v1/health/, at most
# LETTA_MATRIX_TEST_LETTA_START_TIMEOUT seconds (default 1200) after the launch: migrations and
# start-up take ~20 s and ~20-40 s on an idle machine, each several times that while a cold
# `cargo build` takes both cores (over 480 s once on a fresh CI machine).
wait_letta() {
    local timeout=${LETTA_MATRIX_TEST_LETTA_START_TIMEOUT:-1200} report_at=$((SECONDS + 60))
    while [ $((SECONDS - letta_launched_at)) -lt "$timeout" ]; do
        if curl -fsS -m 5 "$LETTA_MATRIX_TEST_LETTA_URL/v1/health/" >/dev/null 2>&1; then
            printf 'Letta %s answers at %s (%ss after its launch)\n' "$LETTA_VERSION" \
                "$LETTA_MATRIX_TEST_LETTA_URL" $((SECONDS - letta_launched_at))
            return 0
        fi
        if ! _letta_alive "$letta_server_pid"; then
            printf 'Letta exited before answering; the ends of %s and %s:\n' \
                "$letta_run_dir/setup.log" "$LETTA_MATRIX_TEST_LETTA_LOG" >&2
            tail -n 40 "$letta_run_dir/setup.log" "$LETTA_MATRIX_TEST_LETTA_LOG" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$report_at" ]; then
            printf 'still waiting for Letta (%ss since its launch)\n' $((SECONDS - letta_launched_at))
            report_at=$((SECONDS + 60))
        fi
        sleep 1
    done
    printf 'Letta did not answer %s/v1/health/ within %ss of its launch; the ends of %s and %s:\n' \
        "$LETTA_MATRIX_TEST_LETTA_URL" "$timeout" "$letta_run_dir/setup.log" "$LETTA_MATRIX_TEST_LETTA_LOG" >&2
    tail -n 40 "$letta_run_dir/setup.log" "$LETTA_MATRIX_TEST_LETTA_LOG" >&2
    return 1
}

start_letta() {
    launch_letta && wait_letta
}

# Stops the server and its PostgreSQL and removes the run's dir. With an argument, the server's
# log is kept at that path first. Safe to call when nothing was started, and twice.
stop_letta() {
    [ -n "$letta_run_dir" ] || return 0
    [ $# = 0 ] || cp "$letta_run_dir/letta.log" "$1" 2>/dev/null || true
    local socket
    socket=$(readlink "$letta_run_dir/socket" 2>/dev/null) || socket=
    _letta_stop_run "$letta_run_dir"
    [ -z "$socket" ] || rm -rf "$socket"
    letta_run_dir=
    letta_server_pid=
}
