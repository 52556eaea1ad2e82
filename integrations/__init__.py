"""Tracker integrations (installed as ``lossprobe.integrations``): mlflow, wandb."""
