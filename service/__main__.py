"""`python -m service`: the README's first Quickstart command."""

import sys


def main() -> int:
    print(
        "CuratorNet service: not yet. The HTTP service (FastAPI + ONNX Runtime + FAISS) "
        "lands with the service issue; today the project ships the data layer and the "
        "synthetic art market:\n"
        "  ./dev run python -m training synth --out data/synthetic --seed 0\n"
        "  ./dev run python -m training stats --data data/synthetic",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
