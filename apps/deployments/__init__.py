"""Workers, deployments and replicas; placement and the reconcile loop."""
