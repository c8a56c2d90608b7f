#!/usr/bin/env bash
# The main job on embedded data: sets up the environment if needed, then makes rainy photos from images bundled
# with scikit-image, trains a small DRSformer on the CPU for about 5 minutes and shows what it removes.
# Extra arguments go to `drsformer demo` (e.g. --minutes 10, --out DIR, --device cuda).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
drsformer demo "$@"
