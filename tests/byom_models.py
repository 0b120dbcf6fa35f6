"""Small model factories for the bring-your-own-model tests (`python -m convert export
tests.byom_models:NAME`).

Every framework is imported inside its factory, never at module level: importing this module
must not import torch and TensorFlow together (one framework per process; importing
torchvision after TensorFlow has run a model segfaults).
"""

from __future__ import annotations


def tiny_cnn():
    """A tiny PyTorch CNN for 1x28x28 images: conv, BN, ReLU, pool, linear (logits, no
    softmax): the fast tier's end-to-end export."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10))


def two_heads(vocab: int = 50):
    """A PyTorch model with two inputs (an image, int64 token ids) and two outputs (class
    logits, a per-image embedding): multiple I/O and a non-image input."""
    import torch
    from torch import nn

    class TwoHeads(nn.Module):
        """image [N,1,28,28] float32 + tokens [N,6] int64 -> (logits [N,10], embedding [N,8])."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, stride=2)
            self.embed = nn.Embedding(vocab, 8)
            self.mix = nn.Linear(4 * 13 * 13 + 8, 16)
            self.head = nn.Linear(16, 10)

        def forward(self, image, tokens):
            x = torch.relu(self.conv(image)).flatten(1)
            t = self.embed(tokens).mean(dim=1)
            h = torch.relu(self.mix(torch.cat([x, t], dim=1)))
            return self.head(h), t

    return TwoHeads()


def keras_residual(size: int = 28):
    """A small Keras functional model: Conv2D, BatchNormalization, a residual Add, pooling,
    Dense with softmax (NHWC input size x size x 1)."""
    import keras

    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="res_conv")(x)
    y = keras.layers.BatchNormalization(name="res_bn")(y)
    x = keras.layers.Add(name="res_add")([x, y])
    x = keras.layers.ReLU(name="res_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="keras_residual")


def resnet18(num_classes: int = 10):
    """torchvision's resnet18, randomly initialised (no download), for small inputs."""
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=num_classes)


def mobilenet_v3_small(num_classes: int = 10):
    """torchvision's mobilenet_v3_small, randomly initialised (no download)."""
    from torchvision.models import mobilenet_v3_small as build

    return build(weights=None, num_classes=num_classes)


def mobilenet_v2(size: int = 32, classes: int = 10):
    """keras.applications.MobileNetV2 at a small input size, randomly initialised."""
    import keras

    return keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None,
                                          classes=classes)


def not_a_model():
    """Returns something that is neither an nn.Module nor a keras.Model (a test of the error)."""
    return object()
