"""Offline side of CuratorNet: data, synthetic market, sampling, training, export, evaluation.

Everything here may use TensorFlow and scikit-learn (the `train` extra), except the data
layer and the synthetic market, which need only numpy so that `python -m training synth`
and `stats` run on the service's lean environment too.
"""
