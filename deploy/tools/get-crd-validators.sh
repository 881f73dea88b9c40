#!/usr/bin/env bash
# Install the CRD validators tests/deploy uses into ./.tools/crd-validate (idempotent).
#
# Schemas for KEDA's ScaledObject/TriggerAuthentication and prometheus-operator's ServiceMonitor and PodMonitor come
# from npm packages generated from those projects' CRDs (@kubernetes-models/keda and
# @kubernetes-models/prometheus-operator), pinned by deploy/tools/crd-validate/package-lock.json.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
src="$root/deploy/tools/crd-validate"
dest="$root/.tools/crd-validate"
stamp="$dest/.installed"
want=$(cat "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" | sha256sum | cut -c1-16)

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$dest/validate.mjs"
  exit 0
fi
command -v npm >/dev/null || { echo "get-crd-validators.sh: npm is needed" >&2; exit 1; }
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" "$dest/"
(cd "$dest" && npm ci --silent --no-audit --no-fund --ignore-scripts >/dev/null)
echo "$want" > "$stamp"
echo "$dest/validate.mjs"
