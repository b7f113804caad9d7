#!/usr/bin/env bash
# Local PostgreSQL and RabbitMQ for SEmigrate, on 127.0.0.1 and private ports, with all state under
# one folder. Idempotent: `up` installs what is missing, starts what is stopped, and prints the
# connection settings (stdout, as SEMIGRATE__ variables); everything else goes to stderr.
#
#   deploy/services.sh up|down|status|env
#   deploy/services.sh host-user NAME...          a broker user for each host's worker; prints `NAME URI`
#   deploy/services.sh host-user --delete NAME... removes them
#   deploy/services.sh host-permissions NAME      what such a user may configure, write and read
#
# Settings (environment): SEMIGRATE_STATE_DIR (default /opt/semigrate), SEMIGRATE_PG_PORT (15433),
# SEMIGRATE_AMQPS_PORT (16671), SEMIGRATE_AMQP_PORT (16672), SEMIGRATE_RABBIT_DIST_PORT (16673),
# SEMIGRATE_EPMD_PORT (16369), SEMIGRATE_PLAIN_AMQP (unset; 1: a local demo that wants plain AMQP).
# Facts behind the choices: initdb refuses root; RabbitMQ's default distribution port is AMQP + 20000;
# epmd outlives the node.
#
# `up` also makes the system user semigrate-qemu, which running guests' QEMUs drop to (never root).
#
# Credentials: PostgreSQL takes passwords only (scram-sha-256 over TCP; the local socket only for the
# postgres system user; the application logs in as the role semigrate, owner of the database
# semigrate and nothing more), and RabbitMQ's guest (an administrator) is gone: the services' user
# `semigrate` has no administrator tag. Both passwords are made once, kept 0600 in STATE/secrets, and
# printed in the settings. RabbitMQ speaks AMQPS only (TLS 1.2+), with a certificate from a CA made
# here (STATE/tls, its key 0600) that the machine's trust store is given; plain AMQP only when
# SEMIGRATE_PLAIN_AMQP=1 is set explicitly.
set -euo pipefail
umask 022 # what it installs and shares (the CA in the trust store) must be readable; semigrate itself runs under 077

STATE=${SEMIGRATE_STATE_DIR:-/opt/semigrate}
PG_PORT=${SEMIGRATE_PG_PORT:-15433}
AMQP_PORT=${SEMIGRATE_AMQP_PORT:-16672}
AMQPS_PORT=${SEMIGRATE_AMQPS_PORT:-16671}
PLAIN_AMQP=${SEMIGRATE_PLAIN_AMQP:-}
DIST_PORT=${SEMIGRATE_RABBIT_DIST_PORT:-16673}
EPMD_PORT=${SEMIGRATE_EPMD_PORT:-16369}

PG_DIR=$STATE/postgres
RMQ_DIR=$STATE/rabbitmq
RMQ_PID=$RMQ_DIR/rabbit.pid
SECRETS=$STATE/secrets
TLS_DIR=$STATE/tls
# Named for the state folder: two local installations never replace each other's CA.
TRUSTED_CA=/usr/local/share/ca-certificates/semigrate-local-ca-$(printf '%s' "$STATE" | sha256sum | cut -c1-12).crt

log() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

# A password made once (32 letters and digits), kept owner-only.
secret() {
  local f=$SECRETS/$1
  if [ ! -s "$f" ]; then
    (umask 077; mkdir -p "$SECRETS"; head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$f.tmp" && mv "$f.tmp" "$f")
  fi
  cat "$f"
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

ensure_packages() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v update-ca-certificates >/dev/null || missing+=(ca-certificates)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}) and not root: install them first"
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$STATE"
  local aptlog=$STATE/apt.log
  apt-get update >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed (log: $aptlog)"; }
  # The rabbitmq-server package does not start its service here (no init system); it exits 0.
  apt-get install -y --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1 \
    || { tail -n 20 "$aptlog" >&2; die "apt-get install ${missing[*]} failed (log: $aptlog)"; }
  pg_bin >/dev/null || die "PostgreSQL binaries not found after install"
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || die "rabbitmq-server not found after install"
}

# --- PostgreSQL -------------------------------------------------------------------------------

# 9>&-: the daemons must not inherit the lock below, or they would hold it for ever.
pg() { local bin; bin=$(pg_bin); su postgres -s /bin/sh -c "$bin/$*" 9>&-; }

pg_running() { [ -f "$PG_DIR/data/PG_VERSION" ] && pg "pg_ctl status -D '$PG_DIR/data'" >/dev/null 2>&1; }

pg_up() {
  mkdir -p "$PG_DIR/log" "$PG_DIR/run"
  # postgres must traverse every folder above its data folder.
  local d=$STATE
  while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  # Only what postgres does not own yet: a running server deletes its own files meanwhile (chown -R
  # over them failed when one vanished), and never another's.
  find "$PG_DIR" -ignore_readdir_race \( ! -user postgres -o ! -group postgres \) -exec chown postgres:postgres {} +
  chmod 755 "$STATE" "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "postgres: initdb in $PG_DIR/data"
    rm -rf "$PG_DIR/data"
    local pwfile=$PG_DIR/run/initdb.pw
    (umask 077; secret postgres >"$pwfile"); chown postgres "$pwfile"
    pg "initdb -D '$PG_DIR/data' -U postgres --auth-local=peer --auth-host=scram-sha-256 --pwfile='$pwfile' -E UTF8 --locale=C.UTF-8" \
      >"$PG_DIR/log/initdb.log" 2>&1 || { rm -f "$pwfile"; die "initdb failed: see $PG_DIR/log/initdb.log"; }
    rm -f "$pwfile"
    : >"$PG_DIR/data/semigrate-passwords"
  fi
  if pg_running; then
    log "postgres: already running on 127.0.0.1:$PG_PORT"
  else
    log "postgres: starting on 127.0.0.1:$PG_PORT"
    pg "pg_ctl start -w -t 60 -D '$PG_DIR/data' -l '$PG_DIR/log/postgres.log' -o \"-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_DIR/run -c max_connections=200\"" >&2 \
      || die "postgres did not start: see $PG_DIR/log/postgres.log"
  fi
  local i
  for i in $(seq 1 60); do
    pg "pg_isready -q -h 127.0.0.1 -p $PG_PORT -U postgres" && { pg_passwords; pg_app_role; return 0; }
    sleep 0.5
  done
  die "postgres is running but not accepting connections on 127.0.0.1:$PG_PORT"
}

# The application's own role, `semigrate`: it owns the database `semigrate` and nothing more (no
# superuser, no creating roles or databases), so its password is not the cluster's. Made or kept
# on every `up` (idempotent); the postgres role's password stays in STATE/secrets for this script.
pg_app_role() {
  local pw; pw=$(secret postgres-semigrate)
  pg "psql -q -v ON_ERROR_STOP=1 -h '$PG_DIR/run' -p $PG_PORT -U postgres -d postgres" >&2 <<SQL || die "postgres: cannot make the role semigrate"
SET password_encryption = 'scram-sha-256';
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'semigrate') THEN
    CREATE ROLE semigrate LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
  END IF;
END \$\$;
ALTER ROLE semigrate PASSWORD '$pw';
SQL
  if ! pg "psql -tA -h '$PG_DIR/run' -p $PG_PORT -U postgres -d postgres -c \"SELECT 1 FROM pg_database WHERE datname = 'semigrate'\"" | grep -q 1; then
    log "postgres: database semigrate, owned by the role semigrate (no superuser)"
    pg "createdb -h '$PG_DIR/run' -p $PG_PORT -U postgres -O semigrate semigrate" >&2 || die "postgres: cannot make the database semigrate"
  fi
}

# A cluster made before passwords (trust for everyone): the postgres role gets its password, and
# pg_hba.conf takes passwords only (scram-sha-256), the local socket only for the postgres system user.
pg_passwords() {
  [ -f "$PG_DIR/data/semigrate-passwords" ] && return 0
  log "postgres: password authentication (scram-sha-256) from now on"
  local pw; pw=$(secret postgres)
  pg "psql -q -h '$PG_DIR/run' -p $PG_PORT -U postgres -d postgres -c \"SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '$pw'\"" >&2 \
    || die "postgres: cannot set the postgres role's password"
  printf '%s\n' '# deploy/services.sh: passwords only' 'local all postgres peer' \
    'host all all 127.0.0.1/32 scram-sha-256' 'host all all ::1/128 scram-sha-256' >"$PG_DIR/data/pg_hba.conf"
  chown postgres:postgres "$PG_DIR/data/pg_hba.conf"
  pg "pg_ctl reload -D '$PG_DIR/data'" >/dev/null || die "postgres: reload failed"
  : >"$PG_DIR/data/semigrate-passwords"
}

pg_down() {
  if pg_running; then
    log "postgres: stopping"
    pg "pg_ctl stop -m fast -w -D '$PG_DIR/data'" >&2
  else
    log "postgres: not running"
  fi
}

# --- RabbitMQ ---------------------------------------------------------------------------------

rmq_env() {
  export HOME=$RMQ_DIR/home
  export RABBITMQ_NODENAME=semigrate@localhost
  export RABBITMQ_DIST_PORT=$DIST_PORT
  export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
  export RABBITMQ_LOG_BASE=$RMQ_DIR/log
  export RABBITMQ_PID_FILE=$RMQ_PID
  export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
  export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf
  export ERL_EPMD_PORT=$EPMD_PORT
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
}

rmq() { (rmq_env; "/usr/lib/rabbitmq/bin/$@" 9>&-); }

rmq_running() {
  [ -f "$RMQ_PID" ] && kill -0 "$(cat "$RMQ_PID")" 2>/dev/null && rmq rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

rmq_up() {
  mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  [ -f "$RMQ_DIR/home/.erlang.cookie" ] || (
    umask 077 # whoever reads the cookie controls the broker's node: never readable, not even for a moment
    head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$RMQ_DIR/home/.erlang.cookie"
    chmod 400 "$RMQ_DIR/home/.erlang.cookie"
  )
  local conf changed=
  conf=$(rmq_conf)
  if [ "$(cat "$RMQ_DIR/rabbitmq.conf" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" >"$RMQ_DIR/rabbitmq.conf"
    changed=1
  fi
  [ -f "$RMQ_DIR/enabled_plugins" ] || echo '[].' >"$RMQ_DIR/enabled_plugins"
  [ -f "$RMQ_DIR/rabbitmq-env.conf" ] || : >"$RMQ_DIR/rabbitmq-env.conf"
  if rmq_running && [ -n "$changed" ]; then
    log "rabbitmq: its listeners changed: restarting"
    rmq_down
  fi
  if rmq_running; then
    log "rabbitmq: already running on $(rmq_where)"
    rmq_test_vhost
    rmq_users
    rmq_traced_vhost
    return 0
  fi
  rm -f "$RMQ_PID"
  log "rabbitmq: starting on $(rmq_where)"
  (rmq_env; setsid nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$RMQ_DIR/log/server.out" 2>&1 </dev/null 9>&- &)
  local i
  for i in $(seq 1 120); do [ -s "$RMQ_PID" ] && break; sleep 0.5; done
  rmq rabbitmqctl -q wait --timeout 120 "$RMQ_PID" >&2 \
    || die "rabbitmq did not start: see $RMQ_DIR/log/server.out and $RMQ_DIR/log"
  rmq rabbitmq-diagnostics -q ping >/dev/null || die "rabbitmq started but does not answer ping"
  rmq_test_vhost
  rmq_users
  rmq_traced_vhost
}

# AMQPS on loopback with the certificate tls_up made; plain AMQP only when asked for.
rmq_conf() {
  printf '%s\n' 'log.console = false' 'log.file.level = warning' \
    "listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT" "ssl_options.cacertfile = $TLS_DIR/ca.pem" \
    "ssl_options.certfile = $TLS_DIR/server.pem" "ssl_options.keyfile = $TLS_DIR/server.key" \
    'ssl_options.verify = verify_none' 'ssl_options.fail_if_no_peer_cert = false' \
    'ssl_options.versions.1 = tlsv1.3' 'ssl_options.versions.2 = tlsv1.2'
  if [ -n "$PLAIN_AMQP" ]; then echo "listeners.tcp.1 = 127.0.0.1:$AMQP_PORT"; else echo 'listeners.tcp = none'; fi
}

rmq_where() { echo "127.0.0.1:$AMQPS_PORT (AMQPS)${PLAIN_AMQP:+ and 127.0.0.1:$AMQP_PORT (plain AMQP, asked for)}"; }

# --- TLS ----------------------------------------------------------------------------------------

# A CA of this machine's own (made once; its key never leaves STATE/tls) and the broker's certificate
# for 127.0.0.1 and localhost; the machine's trust store gets the CA, so clients check the broker.
tls_up() {
  (umask 077; mkdir -p "$TLS_DIR")
  if [ ! -s "$TLS_DIR/ca.pem" ]; then
    log "tls: making a CA in $TLS_DIR"
    (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=SEmigrate local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$TLS_DIR/ca.key.tmp" -out "$TLS_DIR/ca.pem.tmp" 2>/dev/null) || die "openssl could not make the CA"
    chmod 644 "$TLS_DIR/ca.pem.tmp"
    mv "$TLS_DIR/ca.key.tmp" "$TLS_DIR/ca.key"; mv "$TLS_DIR/ca.pem.tmp" "$TLS_DIR/ca.pem"
    rm -f "$TLS_DIR/server.pem"
  fi
  if [ ! -s "$TLS_DIR/server.pem" ]; then
    log "tls: the broker's certificate (127.0.0.1, localhost)"
    (umask 077; openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null) || die "openssl could not make the broker's key"
    printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'extendedKeyUsage=serverAuth' 'basicConstraints=CA:FALSE' >"$TLS_DIR/server.ext"
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial -days 825 \
      -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem.tmp" 2>/dev/null || die "openssl could not sign the broker's certificate"
    mv "$TLS_DIR/server.pem.tmp" "$TLS_DIR/server.pem"
  fi
  if ! cmp -s "$TLS_DIR/ca.pem" "$TRUSTED_CA"; then
    [ "$(id -u)" -eq 0 ] || die "the machine must trust $TLS_DIR/ca.pem (copy it to $TRUSTED_CA and run update-ca-certificates as root)"
    log "tls: the machine's trust store gets the CA ($TRUSTED_CA)"
    mkdir -p "$(dirname "$TRUSTED_CA")"
    cp "$TLS_DIR/ca.pem" "$TRUSTED_CA"
    update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
  fi
}

# The services' own user, no administrator, on the default vhost and the tests'; guest (an
# administrator, password guest) is deleted.
rmq_users() {
  [ -f "$RMQ_DIR/users" ] && return 0
  local pw; pw=$(secret rabbitmq)
  rmq rabbitmqctl -q add_user semigrate "$pw" >/dev/null 2>&1 || rmq rabbitmqctl -q change_password semigrate "$pw" >&2 \
    || die "rabbitmq: cannot make the user semigrate"
  rmq rabbitmqctl -q set_user_tags semigrate >&2
  local vhost
  for vhost in / semigrate-tests; do
    rmq rabbitmqctl -q set_permissions -p "$vhost" semigrate '.*' '.*' '.*' >&2 || die "rabbitmq: cannot open $vhost to semigrate"
  done
  rmq rabbitmqctl -q delete_user guest >/dev/null 2>&1 || true
  log "rabbitmq: user semigrate (no administrator); guest deleted"
  : >"$RMQ_DIR/users"
}

# The tests' own virtual host: what they publish never reaches the queues of the demo's or an
# operator's workers (an auditor's durable queue would otherwise collect every test's events).
# Made once; the broker keeps it (its mnesia folder stays).
rmq_test_vhost() {
  [ -f "$RMQ_DIR/test-vhost" ] && return 0
  rmq rabbitmqctl -q add_vhost semigrate-tests >/dev/null 2>&1 || true
  : >"$RMQ_DIR/test-vhost"
}

# A virtual host whose every publish the broker's tracer copies to amq.rabbitmq.trace: where the leak
# tests watch page traffic as someone who sees the whole broker would (page requests go through the
# default exchange, which no queue can be bound to). Tracing is the node's runtime state: turned on
# at every `up`.
rmq_traced_vhost() {
  if [ ! -f "$RMQ_DIR/traced-vhost" ]; then
    rmq rabbitmqctl -q add_vhost semigrate-traced >/dev/null 2>&1 || true
    rmq rabbitmqctl -q set_permissions -p semigrate-traced semigrate '.*' '.*' '.*' >&2 || die "rabbitmq: cannot open semigrate-traced to semigrate"
    : >"$RMQ_DIR/traced-vhost"
  fi
  rmq rabbitmqctl -q trace_on -p semigrate-traced >/dev/null || die "rabbitmq: cannot trace semigrate-traced"
}

rmq_down() {
  if [ -f "$RMQ_PID" ] && kill -0 "$(cat "$RMQ_PID")" 2>/dev/null; then
    log "rabbitmq: stopping"
    rmq rabbitmqctl -q stop "$RMQ_PID" >&2 || kill "$(cat "$RMQ_PID")" 2>/dev/null || true
  else
    log "rabbitmq: not running"
  fi
  rm -f "$RMQ_PID"
  # epmd outlives the node; ours listens on a private port only.
  if [ -x "$(command -v epmd)" ] || [ -x /usr/lib/erlang/bin/epmd ]; then
    PATH=$PATH:/usr/lib/erlang/bin epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  fi
}


# --- a broker user per host -------------------------------------------------------------------

# What a host's worker may touch: the queues and exchanges of its own, named under its step queue
# (semigrate-host-NAME: its endpoints, and the exits and entries orchestrators bind to and from) and
# its memory server's (semigrate.pages.NAME), to declare, delete, send to and read; besides those,
# only the default exchange, to send to (pages; answers to steps, by direct reply-to). It can declare,
# delete, read or bind nothing shared, nothing of another host's, nothing of an orchestrator's. Host
# names have no '.' or '_', so no name of one host's is another's. Kept in step with the names the
# code gives (StepQueues, PageQueues); BrokerAccountTests checks both against each other. Prints
# configure, write and read, a line each.
host_permissions() {
  local h=$1 own
  own="semigrate-host-$h([._][A-Za-z0-9._-]+)?|semigrate\\.pages\\.$h(\\.[A-Za-z0-9.]+)?"
  echo "^($own)\$"
  echo "^($own|amq\\.default)\$"
  echo "^($own)\$"
}

valid_host() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] || die "host name '$1': letters, digits and '-' only (up to 63), as \`semigrate worker --host\` takes"; }

# A user per named host (semigrate-host-NAME, its password made once and kept in STATE/secrets), with
# the permissions above on the default vhost and the tests'; all in one import (rabbitmqctl starts a
# VM per call). Prints `NAME URI` per host. With --delete, removes the named hosts' users.
host_users() {
  rmq_running || die "rabbitmq is not running: run \`$0 up\` first"
  if [ "${1:-}" = --delete ]; then
    shift
    local erl="" h
    for h in "$@"; do valid_host "$h"; erl+="rabbit_auth_backend_internal:delete_user(<<\"semigrate-host-$h\">>, <<\"services.sh\">>), "; rm -f "$SECRETS/rabbitmq-host-$h"; done
    [ -n "$erl" ] && rmq rabbitmqctl -q eval "catch begin ${erl}ok end." >/dev/null
    return 0
  fi
  [ $# -gt 0 ] || die "host-user: name one host or more"
  local defs users="" perms="" h pw hash p vhost
  defs=$(mktemp); trap 'rm -f "$defs" "$defs.salt"' RETURN
  for h in "$@"; do
    valid_host "$h"
    pw=$(secret "rabbitmq-host-$h")
    # RabbitMQ's own hash (rabbit_password_hashing_sha256): base64(salt ++ sha256(salt ++ password)).
    head -c 4 /dev/urandom >"$defs.salt"
    hash=$( { cat "$defs.salt"; printf '%s' "$pw" | cat "$defs.salt" - | openssl dgst -sha256 -binary; } | base64 -w0)
    users+="${users:+,}{\"name\":\"semigrate-host-$h\",\"password_hash\":\"$hash\",\"hashing_algorithm\":\"rabbit_password_hashing_sha256\",\"tags\":[]}"
    mapfile -t p < <(host_permissions "$h")
    for vhost in / semigrate-tests; do
      perms+="${perms:+,}{\"user\":\"semigrate-host-$h\",\"vhost\":\"$vhost\",\"configure\":\"${p[0]//\\/\\\\}\",\"write\":\"${p[1]//\\/\\\\}\",\"read\":\"${p[2]//\\/\\\\}\"}"
    done
  done
  printf '{"users":[%s],"permissions":[%s]}\n' "$users" "$perms" >"$defs"
  rmq rabbitmqctl -q import_definitions "$defs" >&2 || die "rabbitmq: cannot make the hosts' users ($*)"
  for h in "$@"; do
    if [ -n "$PLAIN_AMQP" ]; then
      echo "$h amqp://semigrate-host-$h:$(secret "rabbitmq-host-$h")@127.0.0.1:$AMQP_PORT/"
    else
      echo "$h amqps://semigrate-host-$h:$(secret "rabbitmq-host-$h")@127.0.0.1:$AMQPS_PORT/"
    fi
  done
}

# The user a running guest's QEMU drops to (-runas): never root, no home, no shell, in no group of
# another's; it owns nothing, so it reaches none of the files the workers make (root's, 0600/0700).
qemu_user() {
  id -u semigrate-qemu >/dev/null 2>&1 && return 0
  log "qemu: user semigrate-qemu (QEMU runs as it, never as root)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group semigrate-qemu \
    || die "cannot make the user semigrate-qemu"
}

# --- commands ---------------------------------------------------------------------------------

print_env() {
  echo "SEMIGRATE__Postgres__ConnectionString='Host=127.0.0.1;Port=$PG_PORT;Username=semigrate;Password=$(secret postgres-semigrate);Database=semigrate'"
  if [ -n "$PLAIN_AMQP" ]; then
    echo "SEMIGRATE__RabbitMq__Uri='amqp://semigrate:$(secret rabbitmq)@127.0.0.1:$AMQP_PORT/'"
  else
    echo "SEMIGRATE__RabbitMq__Uri='amqps://semigrate:$(secret rabbitmq)@127.0.0.1:$AMQPS_PORT/'"
  fi
}

status() {
  local rc=0
  if pg_running; then log "postgres: running on 127.0.0.1:$PG_PORT"; else log "postgres: stopped"; rc=3; fi
  if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && rmq_running; then
    log "rabbitmq: running on $(rmq_where)"
  else
    log "rabbitmq: stopped"; rc=3
  fi
  log "state: $STATE"
  return $rc
}

# One `up` or `down` at a time: test processes start in parallel and all ask for the services.
lock() { mkdir -p "$STATE"; exec 9>"$STATE/.lock"; flock 9; }

case "${1:-}" in
  up) lock; ensure_packages; qemu_user; pg_up; tls_up; rmq_up; log "state: $STATE"; print_env ;;
  down) lock; pg_bin >/dev/null && pg_down; [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && rmq_down; true ;;
  status) status ;;
  env) print_env ;;
  host-user) shift; lock; host_users "$@" ;;
  host-permissions) valid_host "${2:-}"; host_permissions "$2" ;;
  *) echo "usage: $0 up|down|status|env|host-user [--delete] NAME...|host-permissions NAME" >&2; exit 2 ;;
esac
