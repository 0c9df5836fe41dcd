"""Deployment: certificates and keys, node configs, SuperLink/SuperNode launch scripts."""
