#!/usr/bin/env bash
# Build the local control plane and its tools from Go modules into .cache/bin.
#
# Each tool is rebuilt only when its pinned version (hack/versions.env) changes: a stamp
# file beside the binary records what was built. Go's own build cache (GOCACHE) makes a
# rebuild after a bump cheaper still. No Docker and no release downloads: everything
# comes from the Go module proxy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
bin="$root/.cache/bin"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:-} -mod=mod -trimpath"
export CGO_ENABLED=0

log() { printf '[build-tools] %s\n' "$*" >&2; }

fresh() {  # fresh NAME VERSION: true when NAME was already built at VERSION
  [[ -x "$bin/$1" && -f "$bin/.$1.version" && "$(cat "$bin/.$1.version")" == "$2" ]]
}
stamp() { echo "$2" > "$bin/.$1.version"; }

build_kubernetes() {
  local want="$KUBERNETES_VERSION+etcd-$ETCD_VERSION"
  if fresh kube-apiserver "$want" && fresh kube-controller-manager "$want" \
      && fresh kube-scheduler "$want" && fresh kubectl "$want" && fresh etcd "$want"; then
    log "kubernetes $KUBERNETES_VERSION and etcd $ETCD_VERSION: cached"; return
  fi
  local mod="$root/hack/k8s"
  if ! grep -q "k8s.io/kubernetes $KUBERNETES_VERSION\$" "$mod/go.mod" 2>/dev/null \
      || ! grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$mod/go.mod"; then
    log "generating hack/k8s/go.mod for $KUBERNETES_VERSION"
    local upstream
    upstream=$(cd /tmp && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    python3 "$root/hack/gen-k8s-gomod.py" "$KUBERNETES_VERSION" "$ETCD_VERSION" "$upstream" > "$mod/go.mod"
    rm -f "$mod/go.sum"
  fi
  local v=${KUBERNETES_VERSION#v} major minor
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION"
  (cd "$mod" && go build -ldflags "$ld" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  local t; for t in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do stamp "$t" "$want"; done
}

build_go_install() {  # NAME PACKAGE VERSION [LDFLAGS [STAMP]]
  local name=$1 pkg=$2 version=$3 ld=${4:-"-s -w"} want=${5:-$3}
  if fresh "$name" "$want"; then log "$name $version: cached"; return; fi
  log "building $name $version"
  (cd /tmp && GOFLAGS="-trimpath" GOBIN="$bin" go install -ldflags "$ld" "$pkg@$version")
  stamp "$name" "$want"
}

build_helm() {
  # As helm's own release build does: the version, and the Kubernetes version its
  # client-go speaks (client-go v0.N is Kubernetes 1.N), which `helm template` and
  # `helm lint` assume without a cluster. Without it they assume v1.20 and a chart's
  # kubeVersion constraint refuses to render.
  local gomod client_go major minor ld
  gomod=$(cd /tmp && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")
  client_go=${client_go#v}
  major=$(( ${client_go%%.*} + 1 )); minor=${client_go#*.}; minor=${minor%%.*}
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg; for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  build_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$ld" "$HELM_VERSION+k8s-$major.$minor"
}

build_lws() {
  # The LeaderWorkerSet controller (multi-node replicas), from its module at the pinned
  # version. `go install MOD@VERSION` asks the proxy for the module's version list, which
  # it refuses for this module, so hack/lws/go.mod requires the version and go builds
  # inside that module.
  if fresh lws-controller "$LWS_VERSION"; then log "lws-controller $LWS_VERSION: cached"; return; fi
  local mod="$root/hack/lws"
  if ! grep -q "sigs.k8s.io/lws $LWS_VERSION\$" "$mod/go.mod"; then
    log "pinning hack/lws/go.mod to $LWS_VERSION"
    (cd "$mod" && go mod edit -require "sigs.k8s.io/lws@$LWS_VERSION" && rm -f go.sum)
  fi
  log "building lws-controller $LWS_VERSION"
  (cd "$mod" && go build -ldflags "-s -w" -o "$bin/lws-controller" sigs.k8s.io/lws/cmd)
  stamp lws-controller "$LWS_VERSION"
}

build_gie() {
  # The Gateway API Inference Extension's endpoint picker, built the same way as LWS
  # (hack/gie/go.mod requires the pinned version).
  if fresh epp "$GIE_VERSION"; then log "epp $GIE_VERSION: cached"; return; fi
  local mod="$root/hack/gie"
  if ! grep -q "sigs.k8s.io/gateway-api-inference-extension $GIE_VERSION\$" "$mod/go.mod"; then
    log "pinning hack/gie/go.mod to $GIE_VERSION"
    (cd "$mod" && go mod edit -require "sigs.k8s.io/gateway-api-inference-extension@$GIE_VERSION" \
      && rm -f go.sum)
  fi
  log "building epp $GIE_VERSION"
  (cd "$mod" && go build -ldflags "-s -w" -o "$bin/epp" \
    sigs.k8s.io/gateway-api-inference-extension/cmd/epp)
  stamp epp "$GIE_VERSION"
}

want=${*:-all}
for t in $want; do
  case $t in
    kubernetes) build_kubernetes ;;
    kwok) build_go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" ;;
    helm) build_helm ;;
    lws) build_lws ;;
    gie) build_gie ;;
    all) build_kubernetes
         build_go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
         build_helm
         build_lws
         build_gie ;;
    *) echo "unknown tool: $t (kubernetes|kwok|helm|lws|gie|all)" >&2; exit 2 ;;
  esac
done
# The kwok stage configs ship inside its module: make sure they are in the module cache.
(cd /tmp && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
# So do the LeaderWorkerSet CRD and webhook manifests the local cluster installs.
(cd /tmp && go mod download "sigs.k8s.io/lws@$LWS_VERSION")
# And the inference extension's and the Gateway API's CRDs.
(cd /tmp && go mod download "sigs.k8s.io/gateway-api-inference-extension@$GIE_VERSION" \
  "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
log "done: $(ls "$bin" | tr '\n' ' ')"
