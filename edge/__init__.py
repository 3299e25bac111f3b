"""Camera-box side: bundles, LiteRT classifiers, frame sources, the inspection pipeline. Never TensorFlow."""
