"""The gRPC front end: servicer, health, reflection, model registry and repository, CLI."""
