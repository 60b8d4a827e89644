"""Deployments: models an operator loads on Triton servers through the admin API, and serves by id."""
