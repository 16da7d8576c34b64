#!/usr/bin/env bash
# Install infoplane (the package of this repository) into the freshly created conda environment.
# Snakemake runs this from its working directory; INFOPLANE_SOURCE points elsewhere if needed.
set -euo pipefail
source="${INFOPLANE_SOURCE:-$PWD}"
if [ ! -f "$source/pyproject.toml" ]; then
    echo "infoplane sources not found in $source; set INFOPLANE_SOURCE to the repository" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e "$source"
