"""The model registry: models, versions, artifacts and validation."""
