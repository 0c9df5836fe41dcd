"""Code shared by the ServerApp, the ClientApp and the experiments."""
