"""A user's own models and data, as a package a workflow config names by factory."""
