#!/usr/bin/env bash
# Fuzzes the HTTP intake with Schemathesis (PyPI) against the API's own OpenAPI document: generated
# valid and invalid requests for every operation, checked for no 5xx, documented status codes,
# content types and response schemas, and that invalid input is refused.
#
# Usage: scripts/fuzz-api.sh [API_URL]        (default http://127.0.0.1:8080, e.g. `make run`)
#
# Environment:
#   FUZZ_API_KEY       tenant key sent as `Authorization: Bearer` (default demo-key-acme)
#   FUZZ_EXAMPLES      generated cases per operation (default 200)
#   FUZZ_MAX_TIME      time budget of the whole run in seconds (default 300)
#   FUZZ_SEED          Schemathesis seed, to repeat a run
#   FUZZ_REPORT_DIR    where the JUnit report goes (default target/fuzz-api)
#
# Schemathesis is installed once into a virtualenv under ${AP_CACHE_DIR}. When the API serves no
# /openapi.json (it comes with the read side, issue 3) the script says so and exits 0.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

API=${1:-http://127.0.0.1:8080}
API=${API%/}
KEY=${FUZZ_API_KEY:-demo-key-acme}
EXAMPLES=${FUZZ_EXAMPLES:-200}
MAX_TIME=${FUZZ_MAX_TIME:-300}
REPORT_DIR=${FUZZ_REPORT_DIR:-${AP_REPO_ROOT}/target/fuzz-api}
SCHEMATHESIS_VERSION=4.32.5
VENV="${AP_CACHE_DIR}/venv-schemathesis-${SCHEMATHESIS_VERSION}"

log() { printf '[fuzz-api] %s\n' "$*" >&2; }

if ! [[ -x "${VENV}/bin/st" ]]; then
    ap_apt_install python3 python3
    ap_lock schemathesis
    if ! [[ -x "${VENV}/bin/st" ]]; then
        log "installing schemathesis ${SCHEMATHESIS_VERSION} into ${VENV} (once)"
        rm -rf "${VENV}"
        python3 -m venv "${VENV}" || ap_die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "${VENV}/bin/pip" install -q "schemathesis==${SCHEMATHESIS_VERSION}" || ap_die "pip install schemathesis failed"
    fi
    ap_unlock
fi

status=$(curl -s -o /dev/null -w '%{http_code}' "${API}/openapi.json" || true)
case ${status} in
    200) ;;
    000) ap_die "nothing answers at ${API} (start the API first, e.g. make run)" ;;
    *)
        log "${API}/openapi.json answered ${status}: this API has no OpenAPI document yet (issue 3); nothing to fuzz"
        exit 0
        ;;
esac

mkdir -p "${REPORT_DIR}"
log "fuzzing ${API} from its /openapi.json: up to ${EXAMPLES} cases per operation, ${MAX_TIME} s at most"
seed=()
[[ -n "${FUZZ_SEED:-}" ]] && seed=(--seed "${FUZZ_SEED}")
# The live stream never ends by itself: leave it to the faults suite's SSE clients. Run from the
# report directory, where Schemathesis keeps its example database (.schemathesis/).
cd "${REPORT_DIR}"
exec "${VENV}/bin/st" run "${API}/openapi.json" \
    --url "${API}" \
    --header "Authorization: Bearer ${KEY}" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --exclude-path /activities/stream \
    --max-examples "${EXAMPLES}" \
    --max-time "${MAX_TIME}" \
    --request-timeout 10 \
    --workers 2 \
    --no-color \
    --report junit --report-junit-path "${REPORT_DIR}/junit.xml" \
    "${seed[@]}"
