"""Prefect flows, the served deployment and the `blur` command-line interface."""
