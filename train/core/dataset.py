"""Fashion-MNIST's fixed facts: the four official files with their sha256, one digest for
the whole dataset, and the class names (the ONNX contract's `class_names`)."""

import hashlib

# The official files and their sha256 (the files Zalando Research publishes; their MD5 sums
# match the ones in the dataset's README).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# One digest naming the whole dataset: sha256 over the four files' digests, in FILES order.
DATASET_SHA256 = hashlib.sha256("".join(FILES.values()).encode()).hexdigest()
