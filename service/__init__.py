"""CuratorNet recommendation service: FastAPI + ONNX Runtime + FAISS, no TensorFlow."""

import os

# OpenMP reads this once, when FAISS first loads it, so it is set here, before any module of
# the service imports FAISS. Left unset, an OpenMP thread that finishes its share of a search
# spins for a while waiting for the next one: with two threads per HNSW search of a million
# works, on a machine whose other core was busy, that took a search's CPU from 1.7-2.4 ms to
# 2.5-8.3 ms and its p95 from 2-3 ms to 13-16 ms (README: A million artworks). Passive, an
# idle thread sleeps at once and is woken for the next search. A value set by whoever starts
# the service is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
