#!/usr/bin/env bash
# The release checks (run by .ci/run): the documentation site builds with every link and
# included benchmark output found (mkdocs build --strict); the wheel and sdist build and
# pass twine check; the wheel installs into a fresh venv, with the MPICH wheel from PyPI,
# and stages a file there (its commands and manual pages in place).
#   bash tests/packaging.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
source jobscripts/env.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/mpistage-packaging.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip install --quiet --disable-pip-version-check -e ".[docs]"

echo "== mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$work/site"
test -s "$work/site/api/index.html" && grep -q "StageReport" "$work/site/api/index.html"

echo "== python -m build; twine check --strict"
python -m build --quiet --outdir "$work/dist" . >/dev/null
twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/mpistage-*.whl)
python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); \
assert any(n.endswith('.data/data/share/man/man1/mpistage.1') for n in names), names" "$wheel"

echo "== the wheel in a fresh venv"
"${PYTHON:-python3}" -m venv "$work/fresh"
"$work/fresh/bin/pip" install --quiet --disable-pip-version-check "$wheel[mpich]"
test -f "$work/fresh/share/man/man1/mpistage.1" && test -f "$work/fresh/share/man/man1/mpistage-sbcast.1"
"$work/fresh/bin/mpistage" --version
head -c 3000000 /dev/urandom > "$work/sample.bin"
env -i PATH="$work/fresh/bin:/usr/bin:/bin" HOME="$work" $(env | grep -E '^(MPIR_CVAR|OMPI|PRTE)' || true) \
    "$work/fresh/bin/mpiexec" -n 2 "$work/fresh/bin/mpistage" --ranks-as-nodes --mkdir -q \
    "$work/sample.bin" "$work/node{node}/"
cmp "$work/sample.bin" "$work/node0/sample.bin" && cmp "$work/sample.bin" "$work/node1/sample.bin"
echo "packaging: the site, the wheel and sdist, and a staging from a fresh venv: all good"
