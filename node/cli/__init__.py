"""The composition root: the `radnode` command wires the stages together."""
