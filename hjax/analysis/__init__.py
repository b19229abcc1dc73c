"""hjax.analysis: measurements of trained models (head-Hessian alignment, transfer measure)
and the exact population model of ColoredMNIST."""
