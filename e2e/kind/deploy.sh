#!/usr/bin/env bash
# make kind-deploy: builds lap's images, loads them into the kind cluster,
# patches Knative's configuration for lap and applies config/deploy.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl ko
cd "$ROOT"

# Harness images built from their Dockerfiles, named as in the harness
# registry (sandboxes/harnesses.go), loaded straight into the node.
# Each Dockerfile names its build context in its header: the opencode image
# copies the adapter from claude-agent-sdk, so its context is sandboxes/.
build_harness() {
  local image=$1 dockerfile=$2 context=$3
  [[ -f "$dockerfile" ]] || die "$dockerfile not found"
  log "building $image"
  docker build -t "$image" -f "$dockerfile" "$context"
  kind load docker-image --name "$KIND_CLUSTER_NAME" "$image"
}
build_harness lap.dev/harness-claude-agent-sdk:latest sandboxes/claude-agent-sdk/Dockerfile sandboxes/claude-agent-sdk
build_harness lap.dev/harness-opencode:latest sandboxes/opencode/Dockerfile sandboxes

log "patching Knative's configuration for lap (config/deploy/knative-patches)"
for f in config/deploy/knative-patches/config-*.yaml; do
  kctx patch configmap "$(basename "$f" .yaml)" -n knative-serving --type merge --patch-file "$f"
done
kctx patch deployment activator -n knative-serving --type strategic \
  --patch-file config/deploy/knative-patches/activator.yaml

kctx apply -f config/deploy/00-namespaces.yaml
if ! kctx get secret lapd -n "$LAP_SYSTEM" >/dev/null 2>&1; then
  log "generating lapd's master key (secret $LAP_SYSTEM/lapd)"
  kctx create secret generic lapd -n "$LAP_SYSTEM" \
    --from-literal=MASTER_KEY="lap_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi

# ko builds lapd and the lap harness (ko:// references) straight into the
# kind node (kind.local), then applies the resolved manifests.
log "building lapd and lap-harness with ko, applying config/deploy"
KO_DOCKER_REPO=kind.local KO_CONFIG_PATH="$ROOT/config/deploy/ko" \
  ko apply --context "kind-${KIND_CLUSTER_NAME}" -f config/deploy/

kctx rollout status deployment/lapd -n "$LAP_SYSTEM" --timeout=180s
log "lapd is running. Reach it with:"
echo "  kubectl --context kind-${KIND_CLUSTER_NAME} -n ${LAP_SYSTEM} port-forward svc/lapd 3000:80"
echo "  export LAP_URL=http://127.0.0.1:3000"
echo "  export MASTER_KEY=\$(kubectl --context kind-${KIND_CLUSTER_NAME} -n ${LAP_SYSTEM} get secret lapd -o jsonpath='{.data.MASTER_KEY}' | base64 -d)"
