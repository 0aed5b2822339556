#!/usr/bin/env bash
# Rebuild models/default from scratch: the default synthetic market (seed 0), then CuratorNet
# with the `default` preset (6 x 250K triples) and seed 0. Run from anywhere:
#   bash models/build-default.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./dev run python -m training synth --out data/synthetic --seed 0
./dev run python -m training train --data data/synthetic --out models/default --preset default --seed 0
