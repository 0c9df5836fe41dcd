"""Privacy experiments: attack library (`attacks`) for the threat models in notes/privacy.md."""
