#!/usr/bin/env bash
# Builds a Kubernetes binary (kube-apiserver by default, or kube-proxy) from
# the wrapper module test/kube/k8s and prints its path. The binary is cached in
# ${PORTICO_CACHE:-$HOME/.cache/portico} under a name keyed on the wrapper's
# go.mod and go.sum, so a cached binary is reused until the wrapper changes.
# A cold build takes about 8 minutes on 2 cores; a cached one returns at once.
#
#   test/kube/build.sh [kube-apiserver|kube-proxy]
set -euo pipefail

name=${1:-kube-apiserver}
case $name in
  kube-apiserver | kube-proxy) ;;
  *)
    echo "build.sh: unknown binary '$name': want kube-apiserver or kube-proxy" >&2
    exit 2
    ;;
esac

wrapper=$(cd "$(dirname "$0")/k8s" && pwd)
cache=${PORTICO_CACHE:-$HOME/.cache/portico}
# go.sum pins every module's content; go.mod adds the replacements and tools.
key=$(cat "$wrapper/go.mod" "$wrapper/go.sum" | sha256sum | cut -c1-16)
bin=$cache/$name-$key

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
# Test packages run in parallel and may all ask for the binary at once:
# one builds while the others wait for it.
exec 9>"$cache/.$name.lock"
flock 9
if [ ! -x "$bin" ]; then
  version=$(cd "$wrapper" && GOTOOLCHAIN=local go list -m -f '{{.Version}}' k8s.io/kubernetes)
  minor=${version#v*.}
  minor=${minor%%.*}
  # The version a release build stamps (hack/lib/version.sh), so that the
  # server reports v1.36.3 rather than v0.0.0-master.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  echo "build.sh: building $name $version into $bin (about 8 minutes cold)" >&2
  start=$(date +%s)
  tmp=$(mktemp "$cache/.$name.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  (cd "$wrapper" && GOTOOLCHAIN=local go build -trimpath -ldflags "$ldflags" -o "$tmp" "k8s.io/kubernetes/cmd/$name")
  chmod 0755 "$tmp"
  mv "$tmp" "$bin"
  trap - EXIT
  echo "build.sh: built $name in $(($(date +%s) - start)) s" >&2
fi
echo "$bin"
