# shellcheck shell=bash
# Shared helpers of scripts/stack.sh, scripts/cluster.sh and scripts/kafka-class.sh (source it, don't run it).
#
# Downloads and builds are cached outside the clone, in ${AP_CACHE_DIR}, so a fresh clone on the
# same machine reuses them; they are fetched/built again when absent (a new machine):
#   ${AP_CACHE_DIR}/kafka-<version>/libs/   Kafka broker + tools jars (Maven Central, scripts/kafka/pom.xml)
#   ${AP_CACHE_DIR}/mirrormaker-<version>/libs/  MirrorMaker 2 (Maven Central, scripts/kafka/mirror-pom.xml)
#   ${AP_CACHE_DIR}/bin/ferretdb            FerretDB built from the Go module proxy

AP_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck disable=SC2034 # used by the scripts that source this file
AP_REPO_ROOT=$(cd "${AP_SCRIPTS_DIR}/.." && pwd -P)
if [[ -z "${HOME:-}" ]]; then
    HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
fi
AP_CACHE_DIR=${AP_CACHE_DIR:-${HOME}/.cache/activity-pipeline}

AP_KAFKA_VERSION=4.4.0
AP_KAFKA_POM="${AP_SCRIPTS_DIR}/kafka/pom.xml"
AP_KAFKA_HOME="${AP_CACHE_DIR}/kafka-${AP_KAFKA_VERSION}"
AP_KAFKA_LIBS="${AP_KAFKA_HOME}/libs"

# MirrorMaker 2: connect-mirror 4.4.0 is not served here, 4.3.1 is; its clients talk to 4.4.0 brokers.
AP_MIRROR_VERSION=4.3.1
AP_MIRROR_POM="${AP_SCRIPTS_DIR}/kafka/mirror-pom.xml"
AP_MIRROR_HOME="${AP_CACHE_DIR}/mirrormaker-${AP_MIRROR_VERSION}"
AP_MIRROR_LIBS="${AP_MIRROR_HOME}/libs"

AP_FERRETDB_MODULE=github.com/FerretDB/FerretDB
AP_FERRETDB_VERSION=v1.24.2
AP_FERRETDB_BIN="${AP_CACHE_DIR}/bin/ferretdb"

ap_log() { printf '[stack] %s\n' "$*" >&2; }
ap_die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

# ap_lock NAME / ap_unlock: an exclusive lock on ${AP_CACHE_DIR}/.NAME.lock, so that two
# concurrent runs do not fetch or build the same thing at the same time.
ap_lock() {
    mkdir -p "${AP_CACHE_DIR}"
    exec {AP_LOCK_FD}>"${AP_CACHE_DIR}/.$1.lock"
    flock "${AP_LOCK_FD}"
}
ap_unlock() {
    exec {AP_LOCK_FD}>&-
}

# ap_apt_install CMD PACKAGE: install a Debian package when the command CMD is missing.
ap_apt_install() {
    local cmd=$1 pkg=$2
    command -v "${cmd}" >/dev/null 2>&1 && return 0
    ap_apt_get_install "'${cmd}' is missing" "${pkg}"
    command -v "${cmd}" >/dev/null 2>&1 || ap_die "installed ${pkg} but '${cmd}' is still missing"
}

# ap_apt_get_install WHY PACKAGE: install a Debian package (WHY says what is missing, for the log).
# `apt-get update` runs once per process, and only when something must be installed.
AP_APT_UPDATED=0
ap_apt_get_install() {
    local why=$1 pkg=$2 sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || ap_die "${why}; install the Debian package '${pkg}' (needs root)"
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 || ap_die "${why} and there is no apt-get; install '${pkg}' by hand"
    ap_log "${why}: installing Debian package ${pkg}"
    if [[ ${AP_APT_UPDATED} -eq 0 ]]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            || ap_die "apt-get update failed"
        AP_APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg}" >&2 \
        || ap_die "apt-get install ${pkg} failed"
}

# ap_postgres_bindir: the server binaries of the newest PostgreSQL that Debian's packages installed
# (/usr/lib/postgresql/<major>/bin: Debian keeps them off PATH, behind its pg_wrapper).
ap_postgres_bindir() {
    local dir
    while read -r dir; do
        if [[ -x "${dir}/postgres" && -x "${dir}/initdb" && -x "${dir}/pg_isready" && -x "${dir}/psql" ]]; then
            printf '%s' "${dir}"
            return 0
        fi
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -rV)
    return 1
}

# ap_ensure_postgres: sets AP_POSTGRES_BIN, installing Debian's `postgresql` (15 on bookworm) when no
# server is installed. Debian's package also creates its own cluster (`main`, port 5432) and starts
# it where a service manager runs; the stack's cluster is another one, under the stack dir.
ap_ensure_postgres() {
    AP_POSTGRES_BIN=$(ap_postgres_bindir) && return 0
    ap_apt_get_install "the PostgreSQL server is missing" postgresql
    AP_POSTGRES_BIN=$(ap_postgres_bindir) \
        || ap_die "installed postgresql but there is no server in /usr/lib/postgresql/*/bin"
}

ap_require_java() {
    ap_apt_install java openjdk-17-jre-headless
}

# ap_maven_libs_ok LIBS POM: the jar cache LIBS is complete and was made from the current POM.
ap_maven_libs_ok() {
    local want have
    [[ -f "$1/.complete" ]] || return 1
    want=$(sha256sum "$2" | cut -d' ' -f1)
    have=$(cat "$1/.complete")
    [[ "${want}" == "${have}" ]]
}

# ap_ensure_maven_libs WHAT POM HOME JAR_GLOB...: copy POM's runtime dependencies from Maven Central
# into HOME/libs (once; ~/.m2 also keeps them), checking that each JAR_GLOB matches a jar there.
# Takes minutes the first time on a new machine.
ap_ensure_maven_libs() {
    local what=$1 pom=$2 home=$3 glob
    shift 3
    local libs="${home}/libs"
    ap_maven_libs_ok "${libs}" "${pom}" && return 0
    ap_require_java
    ap_apt_install mvn maven
    ap_lock "${what}-libs"
    if ap_maven_libs_ok "${libs}" "${pom}"; then # fetched by a concurrent run while we waited for the lock
        ap_unlock
        return 0
    fi
    local tmp="${libs}.tmp.$$" mvnlog="${home}/mvn.log" sum
    mkdir -p "${home}"
    rm -rf "${tmp}"
    ap_log "fetching the ${what} jars from Maven Central into ${libs} (first time: may take minutes; log: ${mvnlog})"
    if ! (cd "${home}" && mvn -B -q -Dstyle.color=never -f "${pom}" \
        dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=${tmp}") >"${mvnlog}" 2>&1 </dev/null; then
        tail -n 30 "${mvnlog}" >&2
        rm -rf "${tmp}"
        ap_die "${what}: fetching the jars with Maven failed (full log: ${mvnlog})"
    fi
    for glob in "$@"; do
        compgen -G "${tmp}/${glob}" >/dev/null \
            || ap_die "${what}: Maven ran but no ${glob} is in ${tmp} (log: ${mvnlog})"
    done
    sum=$(sha256sum "${pom}" | cut -d' ' -f1)
    printf '%s\n' "${sum}" >"${tmp}/.complete"
    rm -rf "${libs}"
    mv "${tmp}" "${libs}"
    ap_unlock
    ap_log "${what}: $(find "${libs}" -name '*.jar' | wc -l) jars in ${libs}"
}

# ap_kafka_libs_ok: the broker's jar cache is complete and was made from the current pom.xml.
ap_kafka_libs_ok() { ap_maven_libs_ok "${AP_KAFKA_LIBS}" "${AP_KAFKA_POM}"; }

# ap_ensure_kafka_libs: the broker and tools jars in ${AP_KAFKA_LIBS}.
ap_ensure_kafka_libs() {
    ap_ensure_maven_libs kafka "${AP_KAFKA_POM}" "${AP_KAFKA_HOME}" 'kafka_2.13-*.jar' 'kafka-tools-*.jar'
}

# ap_ensure_mirror_libs: MirrorMaker 2's jars (connect-mirror, its client, connect-runtime and their
# dependencies) in ${AP_MIRROR_LIBS}, for the two-datacenter profile (scripts/dc.sh).
ap_ensure_mirror_libs() {
    ap_ensure_maven_libs mirrormaker "${AP_MIRROR_POM}" "${AP_MIRROR_HOME}" \
        'connect-mirror-[0-9]*.jar' 'connect-mirror-client-*.jar' 'connect-runtime-*.jar'
}

ap_ferretdb_ok() {
    [[ -x "${AP_FERRETDB_BIN}" ]] && "${AP_FERRETDB_BIN}" --version >/dev/null 2>&1
}

# ap_ensure_ferretdb: build FerretDB into ${AP_FERRETDB_BIN} when it is absent or broken.
#
# A plain `GOBIN=... go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds a binary
# that panics at start ("Invalid build/version/version.txt file content"): the module zip lacks the
# generated build/version/version.txt that FerretDB embeds. So the module source is copied from the
# Go module cache into ${AP_CACHE_DIR}/build, version.txt is written, and it is built there.
ap_ferretdb_src_dir() {
    (cd / && go mod download -json "${AP_FERRETDB_MODULE}@${AP_FERRETDB_VERSION}") |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}
ap_ensure_ferretdb() {
    ap_ferretdb_ok && return 0
    command -v go >/dev/null 2>&1 || ap_die "mongo: FerretDB must be built but 'go' (>= 1.24) is not installed"
    ap_lock ferretdb
    if ap_ferretdb_ok; then
        ap_unlock
        return 0
    fi
    local src work="${AP_CACHE_DIR}/build/ferretdb-${AP_FERRETDB_VERSION}" buildlog="${AP_CACHE_DIR}/build/ferretdb-build.log"
    mkdir -p "${AP_CACHE_DIR}/build" "${AP_CACHE_DIR}/bin"
    ap_log "building FerretDB ${AP_FERRETDB_VERSION} into ${AP_FERRETDB_BIN} (first time: takes minutes; log: ${buildlog})"
    : >"${buildlog}"
    src=$(ap_ferretdb_src_dir 2>>"${buildlog}") \
        || ap_die "mongo: go mod download ${AP_FERRETDB_MODULE}@${AP_FERRETDB_VERSION} failed (log: ${buildlog})"
    [[ -f "${src}/go.mod" ]] || ap_die "mongo: no FerretDB module source at '${src}'"
    rm -rf "${work}"
    cp -R "${src}" "${work}"
    chmod -R u+w "${work}"
    printf '%s\n' "${AP_FERRETDB_VERSION}" >"${work}/build/version/version.txt"
    printf 'local\n' >"${work}/build/version/package.txt"
    if ! (cd "${work}" && GOFLAGS=-buildvcs=false go build -trimpath -o "${AP_FERRETDB_BIN}.tmp" ./cmd/ferretdb) \
        >>"${buildlog}" 2>&1 </dev/null; then
        tail -n 30 "${buildlog}" >&2
        ap_die "mongo: building FerretDB failed (full log: ${buildlog})"
    fi
    mv -f "${AP_FERRETDB_BIN}.tmp" "${AP_FERRETDB_BIN}"
    ap_ferretdb_ok || ap_die "mongo: the FerretDB binary built at ${AP_FERRETDB_BIN} does not run (log: ${buildlog})"
    rm -rf "${work}"
    ap_unlock
    ap_log "mongo: built $("${AP_FERRETDB_BIN}" --version 2>&1 | head -n 1)"
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
    local pid=$1 state
    [[ -r "/proc/${pid}/stat" ]] || return 1
    state=$(sed 's/^.*) //' "/proc/${pid}/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n "${state}" && "${state}" != Z && "${state}" != X ]]
}

# live_pid PIDFILE TOKEN: the live pid in PIDFILE whose command line has TOKEN (so a pid reused by
# another program does not count); fails otherwise.
live_pid() {
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(head -n 1 "$1" | tr -dc '0-9')
    [[ -n "${pid}" ]] && pid_alive "${pid}" || return 1
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    printf '%s' "${pid}"
}

# spawn PIDFILE OUTFILE CMD...: start CMD in its own session, immune to the caller's exit and
# hangups, stdin from /dev/null; the pid file gets the pid of CMD itself (exec keeps the pid).
spawn() {
    local pidfile=$1 out=$2
    shift 2
    rm -f "${pidfile}"
    # shellcheck disable=SC2016 # $$, $0 and $@ are expanded by the inner bash
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "${pidfile}" "$@" \
        </dev/null >>"${out}" 2>&1 {STACK_LOCK_FD}>&- &
}

# ap_write_kafka_log4j2 DIR NAME: the broker's log4j2 configuration in DIR/config (logs in DIR).
ap_write_kafka_log4j2() {
    # Broker log: INFO to a size-rotated file; per-request, state-change and authorizer chatter
    # and the full config dumps (~250 lines each, several per start) at WARN.
    local dir=$1 name=$2
    cat >"${dir}/config/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/stack.sh or cluster.sh on each start: edit the script, not this file. -->
<Configuration status="warn" name="${name}" shutdownHook="disable">
  <Appenders>
    <RollingFile name="server" fileName="${dir}/server.log" filePattern="${dir}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="kafka.network.RequestChannel\$" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
    <Logger name="kafka.authorizer.logger" level="warn"/>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="warn"/>
  </Loggers>
</Configuration>
EOF
}
