#!/usr/bin/env bash
# make kind-up: a kind cluster with Knative Serving 1.15, Kourier and an
# sslip.io domain, as `kn quickstart kind` sets it up. Needs docker, kind,
# kubectl and the internet (release manifests, images).
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
  log "kind cluster $KIND_CLUSTER_NAME exists"
else
  log "creating kind cluster $KIND_CLUSTER_NAME ($KIND_NODE_IMAGE)"
  # Kourier's NodePort 31080 is published on 127.0.0.1:$KIND_INGRESS_PORT
  # (an unprivileged port, 31080 unless set), so
  # http://<name>.127.0.0.1.sslip.io:$KIND_INGRESS_PORT reaches the
  # cluster's ingress without taking the host's port 80.
  kind create cluster --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 120s --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - containerPort: 31080
        hostPort: ${KIND_INGRESS_PORT}
        listenAddress: 127.0.0.1
KIND
fi

serving="https://github.com/knative/serving/releases/download/knative-v${KNATIVE_VERSION}"
kourier="https://github.com/knative-extensions/net-kourier/releases/download/knative-v${KOURIER_VERSION}"

log "installing Knative Serving v${KNATIVE_VERSION}"
kctx apply -f "${serving}/serving-crds.yaml"
kctx wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
kctx apply -f "${serving}/serving-core.yaml"

log "installing Kourier v${KOURIER_VERSION}"
kctx apply -f "${kourier}/kourier.yaml"
kctx patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
kctx patch service/kourier -n kourier-system --type merge \
  -p '{"spec":{"type":"NodePort","ports":[{"name":"http2","port":80,"protocol":"TCP","targetPort":8080,"nodePort":31080}]}}'

log "domain: 127.0.0.1.sslip.io"
kctx patch configmap/config-domain -n knative-serving --type merge \
  -p '{"data":{"127.0.0.1.sslip.io":""}}'

log "waiting for Knative and Kourier"
kctx wait --for=condition=Available --timeout=300s deployment --all -n knative-serving
kctx wait --for=condition=Available --timeout=300s deployment --all -n kourier-system
log "kind cluster $KIND_CLUSTER_NAME is ready for make kind-deploy"
