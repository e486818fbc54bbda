"""stackyard: ship stacks of Kubernetes objects from one management cluster to agents in many."""

__version__ = "0.1.0"
