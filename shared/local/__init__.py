"""Local operation: stand-ins for Azure services and the runner that drives the triggers."""
