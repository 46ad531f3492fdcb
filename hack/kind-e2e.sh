#!/usr/bin/env bash
# The zero-trust walkthrough with Envoy sidecars on Kubernetes (kind).
# Needs: Docker (a running engine), kind, kubectl. It cannot run on machines without a Docker
# engine (the project's build machines): run it on a workstation. Usage: hack/kind-e2e.sh
# Until `weftctl install control-plane` exists, the manifests are in hack/k8s/.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=weft-e2e
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

step "kind cluster and the weft image"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
docker build -t weft:dev -f hack/Dockerfile .
kind load docker-image weft:dev --name "$CLUSTER"

step "1. weft-cp"
kubectl apply -f hack/k8s/control-plane.yaml
kubectl -n weft-system rollout status deploy/weft-cp --timeout=180s
CP=$(kubectl -n weft-system get pod -l app=weft-cp -o name | head -1)
weftctl() { kubectl -n weft-system exec -i "$CP" -- weftctl "$@"; }

kubectl get ns demo >/dev/null 2>&1 || kubectl create ns demo
workload() { # name service port image args env
  kubectl -n demo create secret generic "$1-token" --dry-run=client -o yaml \
    --from-literal=token="$(weftctl generate dataplane-token --mesh default --name "$1")" \
    --from-literal=ca.crt="$(kubectl -n weft-system exec "$CP" -- cat /var/lib/weft/xds-tls.crt)" | kubectl apply -f -
  sed -e "s|__NAME__|$1|g" -e "s|__SERVICE__|$2|g" -e "s|__PORT__|$3|g" -e "s|__IMAGE__|$4|g" -e "s|__ARGS__|$5|g" -e "s|__ENV__|$6|g" \
    hack/k8s/workload.yaml.tpl | kubectl apply -f -
}
workload redis redis 6379 redis:7 '[]' '[]'
workload demo-app demo-app 5000 kumahq/kuma-demo '[]' '[{name: REDIS_HOST, value: redis.mesh}, {name: REDIS_PORT, value: "6379"}]'
workload gateway gateway 8080 curlimages/curl '[sleep, infinity]' '[]'
for d in redis demo-app gateway; do kubectl -n demo rollout status "deploy/$d" --timeout=300s; done
GW=$(kubectl -n demo get pod -l app=gateway -o name | head -1)
call() { kubectl -n demo exec "$GW" -c app -- curl -s -o /dev/null -w '%{http_code}' -m 5 -XPOST http://demo-app.mesh:5000/increment || true; }
expect() { # wanted-status what
  for _ in $(seq 1 30); do [ "$(call)" = "$1" ] && { echo "ok: $2"; return; }; sleep 2; done
  fail "$2 (wanted $1, got $(call))"
}

step "2. traffic flows gateway -> demo-app -> redis"
expect 200 "the gateway's call reaches redis through demo-app"

step "3. mTLS on (builtin CA): traffic still flows"
printf 'type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n' | weftctl apply -f -
expect 200 "still flowing, now over mTLS"

step "4. delete allow-all-default: the gateway is denied"
weftctl delete traffic-permission allow-all-default --mesh default
expect 000 "the gateway's connection is refused by demo-app's sidecar"

step "5. gateway-to-any: demo-app is reached, its call to redis is denied"
printf 'type: TrafficPermission\nmesh: default\nname: gateway-to-any\nsources: [{match: {kuma.io/service: gateway}}]\ndestinations: [{match: {kuma.io/service: "*"}}]\n' | weftctl apply -f -
expect 500 "demo-app answers, with an error from redis"

step "6. demo-app-to-redis: everything works"
printf 'type: TrafficPermission\nmesh: default\nname: demo-app-to-redis\nsources: [{match: {kuma.io/service: demo-app}}]\ndestinations: [{match: {kuma.io/service: redis}}]\n' | weftctl apply -f -
expect 200 "the gateway's call reaches redis again"

step "done: kind delete cluster --name $CLUSTER removes everything"
