"""Pure builders: spec in, Kubernetes object out."""
