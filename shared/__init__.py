"""The application library: everything the Functions adapters, the CLI and the tests call.

Layers point one way: ``function_app.py`` -> ``shared`` -> ``scoring``. Nothing here imports
``function_app``; ``scoring`` imports nothing from here.
"""
