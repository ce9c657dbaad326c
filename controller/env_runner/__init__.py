"""Closed-loop evaluation of a policy during training."""
