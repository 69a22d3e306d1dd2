"""Models over time: scheduled retraining over a trailing window, first training of new sensors,
and the fitness gate that decides whether a new version replaces the active one.

The fitting itself is :func:`shared.models.training.train_models`; the registry (history,
activation, rollback) is :mod:`shared.models.registry`. Import the service from
:mod:`shared.training.service` (this package imports nothing, so the registry can use it too).
"""
