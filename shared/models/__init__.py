"""Per-sensor models: training from SQL, the versioned registry, activation and rollback."""
