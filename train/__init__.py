"""Fashion-MNIST data (framework-free), the seed recipe, and LeNet-5 training per framework;
`train.core` under it is the toolkit's shared core."""
