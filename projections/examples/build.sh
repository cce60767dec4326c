#!/usr/bin/env bash
# Builds one of the example projections as a wallex:projection@0.1.0 component.
#
#   projections/examples/build.sh python     OUT_DIR   # → OUT_DIR/wallets-py.wasm
#   projections/examples/build.sh javascript OUT_DIR   # → OUT_DIR/wallets-js.wasm
#
# Installs the pinned toolchain if it is missing:
#   python:     componentize-py into a venv under $WALLEX_TOOLS_CACHE (default
#               ${XDG_CACHE_HOME:-~/.cache}/wallex), or `pip install --user` if venv is unavailable;
#   javascript: `npm ci` in projections/examples/javascript (jco + componentize-js from
#               package-lock.json into its node_modules/).
# On failure it prints one line saying what is missing or what failed, and exits non-zero.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1
JCO_VERSION=1.34.0
COMPONENTIZE_JS_VERSION=0.22.0

fail() {
  echo "build.sh: $*" >&2
  exit 1
}

# The tool's output of a failed step is kept beside the output: OUT_DIR/<name>.build.log.
fail_build() {
  local message=$1 kept=$out/$2.build.log line
  cp "$log" "$kept"
  # The most telling line: the last error line before a Rust backtrace, else the last line.
  line=$(sed '/^Stack backtrace:/,$d' "$log" | grep -E '(Error|error)(\[[^]]*\])?:' | tail -n 1 || true)
  [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 || true)
  fail "$message: $(echo "$line" | sed 's/^[[:space:]]*//') (full output: $kept)"
}

[ $# -eq 2 ] || fail "usage: $0 python|javascript OUT_DIR"
lang=$1
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "$here/../../wit" && pwd) || fail "WIT directory not found at $here/../../wit"
mkdir -p "$2" || fail "cannot create output directory $2"
out=$(cd "$2" && pwd)
cache=${WALLEX_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wallex}
# Builds share the machine with others: stay in the background.
nice=(nice -n "${BUILD_NICE:-19}")

log=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$log" "$work"' EXIT

# componentize-py: one on PATH at the pinned version, else the cached venv, else install it.
find_componentize_py() {
  local venv=$cache/componentize-py-$COMPONENTIZE_PY_VERSION
  local candidate
  for candidate in "$(command -v componentize-py || true)" "$venv/bin/componentize-py" \
    "$(python3 -m site --user-base 2>/dev/null)/bin/componentize-py"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      [ "$("$candidate" --version 2>/dev/null)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
      echo "$candidate"
      return 0
    fi
  done
  command -v python3 >/dev/null || return 1
  echo "installing componentize-py==$COMPONENTIZE_PY_VERSION into $venv" >&2
  mkdir -p "$cache"
  if rm -rf "$venv" && python3 -m venv "$venv" >>"$log" 2>&1; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      "componentize-py==$COMPONENTIZE_PY_VERSION" >>"$log" 2>&1 || return 1
    echo "$venv/bin/componentize-py"
  else
    rm -rf "$venv"
    python3 -m pip install -q --user --disable-pip-version-check \
      "componentize-py==$COMPONENTIZE_PY_VERSION" >>"$log" 2>&1 || return 1
    echo "$(python3 -m site --user-base)/bin/componentize-py"
  fi
}

installed_npm_version() {
  node -p "require('$here/javascript/node_modules/$1/package.json').version" 2>/dev/null || true
}

SECONDS=0
case $lang in
python | py)
  componentize_py=$(find_componentize_py) ||
    fail "componentize-py is not installed: pip install componentize-py==$COMPONENTIZE_PY_VERSION ($(tail -n 1 "$log"))"
  artifact=$out/wallets-py.wasm
  # Build from a copy: componentize-py imports the app (and writes __pycache__) where it finds it,
  # and generates the wit_world bindings itself, so nothing generated lands in the repository.
  cp "$here/python/app.py" "$work/"
  (cd "$work" && "${nice[@]}" "$componentize_py" -q -d "$wit" -w projection componentize app \
    -o "$artifact") >"$log" 2>&1 ||
    fail_build "componentize-py $COMPONENTIZE_PY_VERSION failed to build wallets-py" wallets-py
  ;;
javascript | js)
  command -v node >/dev/null && command -v npm >/dev/null ||
    fail "node/npm is not installed: install Node.js 20 or later with npm, then run npm ci in $here/javascript"
  if [ "$(installed_npm_version @bytecodealliance/jco)" != "$JCO_VERSION" ] ||
    [ "$(installed_npm_version @bytecodealliance/componentize-js)" != "$COMPONENTIZE_JS_VERSION" ]; then
    echo "installing @bytecodealliance/jco@$JCO_VERSION and @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION (npm ci in $here/javascript)" >&2
    (cd "$here/javascript" && "${nice[@]}" npm ci --no-audit --no-fund) >"$log" 2>&1 ||
      fail_build "jco is not installed: cd $here/javascript && npm ci (jco $JCO_VERSION, componentize-js $COMPONENTIZE_JS_VERSION) failed" npm-ci
  fi
  artifact=$out/wallets-js.wasm
  # --disable all: no WASI import at all (stdio, random, clocks, http, fetch-event): the
  # component imports only wallex:projection/host.
  (cd "$here/javascript" && "${nice[@]}" ./node_modules/.bin/jco componentize projection.js \
    --wit "$wit" --world-name projection --disable all -o "$artifact") >"$log" 2>&1 ||
    fail_build "jco $JCO_VERSION componentize failed to build wallets-js" wallets-js
  ;;
*)
  fail "unknown language '$lang': expected python or javascript"
  ;;
esac

[ -s "$artifact" ] || fail "no component was written to $artifact"
rm -f "${artifact%.wasm}.build.log"
echo "built $artifact ($(wc -c <"$artifact") bytes) in ${SECONDS}s"
