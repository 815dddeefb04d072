"""Feedback-weight rules: backprop's backward pass through a feedback weight B_l in place of W_l^T."""
