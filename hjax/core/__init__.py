"""hjax.core: the curvature math of a classifier head (pure JAX: no Flax, no I/O)."""
