"""Profiles of crucible's hot paths against the PyTorch implementations a user would use."""
