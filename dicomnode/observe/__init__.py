"""Observe: what the node tells people about itself — logs, metrics, health, status."""
