"""Workstation side: datasets, synthetic defects, Keras training, evaluation and int8 export.

Only the modules that train, evaluate or export import TensorFlow; `synth` and `data` do not.
"""
