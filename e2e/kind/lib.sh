# shellcheck shell=bash
# Helpers shared by lap's kind scripts. Sourced, not run.

# Names the scripts agree on; override from the environment.
: "${KIND_CLUSTER_NAME:=lap}"
: "${KNATIVE_VERSION:=1.15.2}"   # Knative Serving 1.15 = knative.dev/serving v0.42
: "${KOURIER_VERSION:=1.15.1}"
# Knative 1.15 needs Kubernetes 1.28 or newer; kind's default node image
# follows kind's own release, so the node is pinned here.
: "${KIND_NODE_IMAGE:=kindest/node:v1.30.4}"
: "${KIND_INGRESS_PORT:=31080}"
: "${LAP_SYSTEM:=lap-system}"
: "${LAP_AGENTS:=lap-agents}"
export KIND_CLUSTER_NAME

# The repository root, whatever the caller's working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export ROOT

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need fails unless every named command is installed.
need() {
  local missing=()
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  if ((${#missing[@]} > 0)); then
    die "missing ${missing[*]}: this quickstart needs docker, kind, kubectl, ko, kn, curl and jq (see README, \"lap on Knative\")"
  fi
}

# until_true TIMEOUT_SECONDS DESCRIPTION COMMAND...: polls COMMAND every
# second until it succeeds, or fails after the timeout.
until_true() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for ${what}"
    fi
    sleep 1
  done
}

# kctx runs kubectl against the kind cluster, whatever the current context.
kctx() { kubectl --context "kind-${KIND_CLUSTER_NAME}" "$@"; }
