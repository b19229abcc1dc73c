"""hjax.models: Flax featurizers with a linear head, params split into featurizer and classifier."""

from hjax.models.linear_model import MATMULS, Classifier, MLPFeaturizer, Model, irm_mlp
from hjax.models.mnist_cnn import MNIST_CNN_WIDTHS, MNISTCNN, mnist_cnn_model, scaled_widths
from hjax.models.resnet import ResNet, ResNetModel, resnet_model

__all__ = ["MATMULS", "Classifier", "MLPFeaturizer", "MNISTCNN", "MNIST_CNN_WIDTHS", "Model", "ResNet",
           "ResNetModel", "irm_mlp", "mnist_cnn_model", "resnet_model", "scaled_widths"]
