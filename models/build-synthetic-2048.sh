#!/usr/bin/env bash
# Rebuild models/synthetic-2048: CuratorNet on the synthetic market's 2048-d feature vectors
# (the shape of UGallery's ResNet50 features), `default` preset, seed 0. It serves stores
# whose artworks arrive as feature vectors rather than pictures. Run from anywhere:
#   bash models/build-synthetic-2048.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./dev run python -m training synth --out data/synthetic --seed 0
./dev run python -m training train --data data/synthetic --out models/synthetic-2048 \
    --preset default --seed 0
