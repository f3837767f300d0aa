#!/bin/sh
# deploy/k8s renders with `kubectl kustomize` (Debian's kubernetes-client) and holds what the
# deployment needs: two Deployments (trainer, serving), three Services (one headless), a
# PodDisruptionBudget, an autoscaling/v2 HorizontalPodAutoscaler, a ReadWriteMany
# PersistentVolumeClaim and a ConfigMap; the replicas run --read-only with native gRPC probes.
# Usage: kustomize_test.sh SOURCE_DIR
set -eu
src=${1:?usage: kustomize_test.sh SOURCE_DIR}
kubectl=${KUBECTL:-kubectl}
if ! command -v "$kubectl" >/dev/null 2>&1; then
  echo "kustomize_test: kubectl not found (Debian package kubernetes-client; scripts/setup.sh installs it)" >&2
  exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$kubectl" kustomize "$src/deploy/k8s" >"$out"

fail=0
expect_count() {  # KIND N
  n=$(grep -c "^kind: $1\$" "$out" || true)
  if [ "$n" -ne "$2" ]; then echo "FAIL: $2 x kind $1 expected, found $n"; fail=1; else echo "ok: $n x $1"; fi
}
expect_text() {  # WHAT PATTERN
  if grep -Eq -- "$2" "$out"; then echo "ok: $1"; else echo "FAIL: $1 (no match for '$2')"; fail=1; fi
}
expect_count Deployment 2
expect_count Service 3
expect_count PodDisruptionBudget 1
expect_count HorizontalPodAutoscaler 1
expect_count PersistentVolumeClaim 1
expect_count ConfigMap 1
expect_count ServiceMonitor 1
expect_text "HPA is autoscaling/v2" '^apiVersion: autoscaling/v2$'
expect_text "PDB is policy/v1" '^apiVersion: policy/v1$'
expect_text "store is ReadWriteMany" '^  - ReadWriteMany$'
expect_text "a headless Service" '^  clusterIP: None$'
expect_text "trainer strategy Recreate" '^    type: Recreate$'
expect_text "replicas run --read-only" '^        - --read-only$'
expect_text "native gRPC probes" '^          grpc:$'
expect_text "non-root" 'runAsNonRoot: true'
expect_text "2 serving replicas" '^  replicas: 2$'
expect_text "pods annotated for Prometheus" 'prometheus.io/scrape: "true"$'
expect_text "the HTTP port is served" 'DROPNET_HTTP_LISTEN: 0.0.0.0:8080$'
expect_text "ServiceMonitor scrapes /metrics on the http port" '^    path: /metrics$'
expect_text "HPA minReplicas >= 2" '^  minReplicas: ([2-9]|[1-9][0-9]+)$'
expect_text "ConfigMap referenced by its generated name" 'name: dropnet-config-[a-z0-9]{10}$'
# The serving Deployment is the one with --read-only, the trainer has exactly one replica.
awk 'BEGIN{RS="\n---\n"} /kind: Deployment/ && /name: dropnet-trainer/ && /replicas: 1\n/ {found=1} END{exit !found}' "$out" \
  && echo "ok: trainer has 1 replica" || { echo "FAIL: trainer Deployment with replicas: 1"; fail=1; }
if [ "$fail" -ne 0 ]; then
  echo "--- rendered ---"; cat "$out"
  exit 1
fi
echo "kustomize_test: deploy/k8s renders with the expected objects"
