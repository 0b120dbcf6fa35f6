"""Fashion-MNIST data (framework-free), the seed recipe, and LeNet-5 training per framework."""
