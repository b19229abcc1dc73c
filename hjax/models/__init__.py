"""hjax.models: Flax featurizers with a linear head, params split into featurizer and classifier."""

from hjax.models.linear_model import Classifier, MLPFeaturizer, Model, irm_mlp
from hjax.models.mnist_cnn import MNIST_CNN_WIDTHS, MNISTCNN, mnist_cnn_model, scaled_widths

__all__ = ["Classifier", "MLPFeaturizer", "MNISTCNN", "MNIST_CNN_WIDTHS", "Model", "irm_mlp",
           "mnist_cnn_model", "scaled_widths"]
