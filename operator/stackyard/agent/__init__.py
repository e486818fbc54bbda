"""The stackyard agent: runs in a target cluster, pulls its desired state, applies it and reports back."""
