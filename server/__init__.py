"""The Flower ServerApp: strategy factory, round loop, metric aggregation, results."""
