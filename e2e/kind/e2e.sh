#!/usr/bin/env bash
# make e2e-kind: an agent, a session and a message with the mock model
# through the real cluster; kn shows the agent's Service and the session's
# revision; an idle session goes to zero pods and resumes on the next
# message. Run after make kind-up kind-deploy.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl kn curl jq

: "${E2E_REPO_URL:=https://github.com/octocat/Hello-World.git}"
: "${E2E_BRANCH:=master}"
: "${E2E_PORT:=3300}"
agent="e2e-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
kn_() { kn --context "kind-${KIND_CLUSTER_NAME}" "$@"; }

# shows PATTERN COMMAND...: runs COMMAND, prints its output to stderr and
# succeeds if a line matches PATTERN. The output is captured first: piping
# it through tee into grep -q fails under pipefail whenever grep stops
# reading early (tee gets SIGPIPE), even on correct output; and a failing
# COMMAND fails the check instead of being read as "no match".
shows() {
  local pattern=$1 out
  shift
  out="$("$@")" || return 1
  printf '%s\n' "$out" >&2
  grep -q -- "$pattern" <<<"$out"
}

# The idle timeout is shortened for this run only: cleanup puts back what
# the deployment had (or removes the variable), so lapd does not keep
# scaling everyone's sessions to zero after 20 s.
idle_var='{.spec.template.spec.containers[0].env[?(@.name=="SESSION_IDLE_TIMEOUT")].value}'
prev_idle="$(kctx get deployment/lapd -n "$LAP_SYSTEM" -o jsonpath="$idle_var")"
forward=
cleanup() {
  curl -fsS -X DELETE -H "Authorization: Bearer ${MASTER_KEY:-}" "${api:-}/agents/${agent}" >/dev/null 2>&1 || true
  if [[ -n "$forward" ]]; then kill "$forward" 2>/dev/null || true; fi
  if [[ -n "$prev_idle" ]]; then
    kctx set env deployment/lapd -n "$LAP_SYSTEM" "SESSION_IDLE_TIMEOUT=${prev_idle}" >/dev/null || true
  else
    kctx set env deployment/lapd -n "$LAP_SYSTEM" SESSION_IDLE_TIMEOUT- >/dev/null || true
  fi
}
trap cleanup EXIT

log "shortening lapd's idle timeout so the session scales to zero quickly"
kctx set env deployment/lapd -n "$LAP_SYSTEM" SESSION_IDLE_TIMEOUT=20s
kctx rollout status deployment/lapd -n "$LAP_SYSTEM" --timeout=180s

log "port-forwarding lapd to 127.0.0.1:${E2E_PORT}"
kctx port-forward -n "$LAP_SYSTEM" svc/lapd "${E2E_PORT}:80" >/dev/null 2>&1 &
forward=$!

MASTER_KEY="$(kctx get secret lapd -n "$LAP_SYSTEM" -o jsonpath='{.data.MASTER_KEY}' | base64 -d)"
api="http://127.0.0.1:${E2E_PORT}/api/v1/managed_agents"
until_true 30 "the port-forward" curl -fsS "http://127.0.0.1:${E2E_PORT}/readyz"

# call METHOD PATH [JSON]: an authenticated API call; prints the body.
call() {
  local args=(-fsS -X "$1" -H "Authorization: Bearer ${MASTER_KEY}" -H 'Content-Type: application/json')
  if (($# > 2)); then args+=(--data "$3"); fi
  curl "${args[@]}" "${api}$2"
}

log "creating agent $agent (harness lap, model mock/tools)"
agent_id="$(call POST /agents "$(jq -n --arg n "$agent" --arg r "$E2E_REPO_URL" --arg b "$E2E_BRANCH" \
  '{name:$n, harness_id:"lap", model:"mock/tools", prompt:"You are lap'\''s e2e agent.", repo_url:$r, branch:$b, warm_pool_size:1}')" | jq -r .id)"
[[ -n "$agent_id" && "$agent_id" != null ]] || die "agent not created"

log "kn service list: the agent is a Knative Service"
shows "^${agent} " kn_ service list -n "$LAP_AGENTS" || die "kn service list does not show $agent"

log "creating a session and waiting until it is ready"
session="$(call POST "/agents/${agent}/session" '{"title":"e2e"}' | jq -r .id)"
status="$(call GET "/sessions/${session}?wait=ready&timeout=300s" | jq -r .status)"
[[ "$status" == ready ]] || die "session $session is $status, not ready"
sandbox="$(call GET "/sessions/${session}" | jq -r .sandbox_id)"
revision="$(kctx get revisions -n "$LAP_AGENTS" -l "lap.dev/sandbox-id=${sandbox}" -o jsonpath='{.items[0].metadata.name}')"
[[ -n "$revision" ]] || die "no revision labelled lap.dev/sandbox-id=${sandbox}"

log "sending a message (mock model)"
reply="$(call POST "/sessions/${session}/message" '{"text":"List the files in the repository."}')"
jq -e '.info.role == "assistant" and (.info.error == null)' <<<"$reply" >/dev/null || die "bad reply: $reply"

log "kn revision list: the session's revision $revision"
shows "^${revision} " kn_ revision list -n "$LAP_AGENTS" -s "$agent" || die "kn revision list does not show $revision"
kn_ route describe "$agent" -n "$LAP_AGENTS"

# pods prints how many pods the session's revision has, and fails when
# kubectl does, so an unreachable cluster never reads as "zero pods".
pods() {
  local out
  out="$(kctx get pods -n "$LAP_AGENTS" -l "serving.knative.dev/revision=${revision}" -o name)" || return 1
  grep -c . <<<"$out" || true
}
session_is() { [[ "$(call GET "/sessions/${session}" | jq -r .status)" == "$1" ]]; }
has_pods() { local n; n="$(pods)" && [[ "$n" == "$1" ]]; }

log "waiting for the session to go idle and its revision to scale to zero"
until_true 300 "session $session to be idle" session_is idle
until_true 300 "revision $revision to have no pods" has_pods 0

log "the next message resumes it"
reply="$(call POST "/sessions/${session}/message" '{"text":"And now?"}')"
jq -e '.info.role == "assistant" and (.info.error == null)' <<<"$reply" >/dev/null || die "bad reply after resume: $reply"
until_true 120 "revision $revision to run again" has_pods 1
session_is ready || die "session $session is not ready after the resumed turn"

log "e2e-kind passed: agent $agent, session $session, revision $revision"
