"""The maths and the weights: the ConvEWMA layer, its FIR fast path, missing values,
continuation, weights files."""
