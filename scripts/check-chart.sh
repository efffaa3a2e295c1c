#!/usr/bin/env bash
# Checks the tidegate Helm chart (helm/tidegate) without a cluster, a helm binary or docker:
#   helm lint (strict) with the real helm engine (PyPI helm-sdkpy), for the default values, every
#   helm/tidegate/ci/*.yaml and the example app chart (helm/examples/app-with-tidegate);
#   rendering with scripts/chart-render (Go text/template + Sprig, helm-compatible, strict);
#   the values against values.schema.json; every manifest against the Kubernetes schemas
#   (PyPI kubernetes-validate, strict); assertions on the rendered content; negative cases
#   (helm/test-values/invalid/*.yaml) that must fail; the Dockerfile (BuildKit's parser, PyPI
#   dockerfile); a self-test showing each check fails on broken input.
#
# Installs what it needs and skips what is already there:
#   apt:  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev (Go sources,
#         built in GOPATH mode: no module proxy needed)
#   PyPI: helm-sdkpy (needs Python 3.12: pyenv's, or $PYTHON312), kubernetes-validate, dockerfile,
#         into a venv
# Cache (git-ignored): $TIDEGATE_CHART_CACHE, default <repo>/.ci-cache/chart
#
# Usage: bash scripts/check-chart.sh     (as root on a fresh Debian machine; exit 0 = all passed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TIDEGATE_CHART_CACHE:-$ROOT/.ci-cache/chart}"
VENV="$CACHE/venv"
RENDERER="$CACHE/bin/chart-render"
OUT="$CACHE/out"
START=$(date +%s)

# Exact versions (what the checks were written against); change them together.
PY_PINS=(
  helm-sdkpy==0.1.32 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4
  attrs==26.1.0 cffi==2.1.1 importlib_resources==7.1.0 jsonschema-specifications==2025.9.1
  packaging==26.4 pycparser==3.12 referencing==0.37.0 rpds-py==2026.9.1 typing_extensions==4.16.0
  dockerfile==3.4.0
)
APT_PKGS=(golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev)

log() { printf '==> [%3ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() {
  echo "check-chart: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

cd "$ROOT"
mkdir -p "$CACHE"

# --- 1. Go toolchain and Go sources from Debian --------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt.log" 2>&1 ||
    { tail -20 "$CACHE/apt.log" >&2; die "apt-get install failed"; }
else
  log "apt packages present: ${APT_PKGS[*]}"
fi
GO=/usr/bin/go
[ -x "$GO" ] || die "$GO not found after installing golang-go"

# --- 2. Build the renderer (GOPATH mode against /usr/share/gocode) -----------------------------
stamp="$(cat "$ROOT/scripts/chart-render/main.go" | sha256sum | cut -c1-16) $("$GO" version)"
if [ -x "$RENDERER" ] && [ "$(cat "$RENDERER.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "chart-render is up to date"
else
  log "building scripts/chart-render"
  mkdir -p "$CACHE/bin"
  (cd "$ROOT/scripts/chart-render" &&
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$CACHE/gocache" GOFLAGS= GOTOOLCHAIN=local \
      "$GO" build -o "$RENDERER" .) || die "building chart-render failed"
  echo "$stamp" >"$RENDERER.stamp"
fi

# --- 3. Python 3.12 venv with helm-sdkpy and kubernetes-validate -------------------------------
find_python312() {
  if [ -n "${PYTHON312:-}" ]; then echo "$PYTHON312"; return; fi
  local c best=""
  for c in "${PYENV_ROOT:-/root/.pyenv}"/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [ -x "$c" ] && best="$c"
  done
  [ -n "$best" ] && { echo "$best"; return; }
  command -v python3.12 || true
}
want="$(printf '%s\n' "${PY_PINS[@]}" | sha256sum | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.pins" 2>/dev/null)" = "$want" ] &&
  "$VENV/bin/python" -c 'import helm_sdkpy, kubernetes_validate, jsonschema, yaml, dockerfile' 2>/dev/null; then
  log "venv is up to date ($VENV)"
else
  PY="$(find_python312)"
  [ -n "$PY" ] || die "helm-sdkpy needs Python 3.12: none found (set PYTHON312=/path/to/python3.12)"
  log "creating venv with $PY and installing ${PY_PINS[*]:0:2}"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python -m venv failed"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PINS[@]}" ||
    die "pip install failed"
  echo "$want" >"$VENV/.pins"
fi

# --- 4. The checks ------------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
log "running checks (rendered manifests kept in $OUT)"
rc=0
"$VENV/bin/python" "$ROOT/scripts/chart-render/checks.py" --repo "$ROOT" --renderer "$RENDERER" --keep "$OUT" || rc=$?
log "done in $(($(date +%s) - START))s: $([ $rc = 0 ] && echo 'all chart checks passed' || echo "chart checks FAILED (exit $rc)")"
exit $rc
