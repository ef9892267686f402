"""Training: data files in, fitted smoothing factors out."""
