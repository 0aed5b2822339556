#!/usr/bin/env bash
# Rebuild models/default from scratch: the synthetic market (seed 0) painted in pixels and
# encoded by the shipped image encoder (models/encoders), then CuratorNet on those 1280-d
# features with the `default` preset and seed 0. The manifest names the encoder, so the
# service serving it accepts pictures. Run from anywhere:
#   bash models/build-default.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./dev run python -m training synth --images --out data/pixels --seed 0
./dev run python -m training train --data data/pixels --out models/default --preset default \
    --seed 0 --image-encoder models/encoders/efficientnet-lite0.json
