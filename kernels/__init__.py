"""ttc kernels."""
