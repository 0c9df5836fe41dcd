"""The Flower ClientApp: local training schedules and the private (never shared) state."""
