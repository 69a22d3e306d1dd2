"""Models over time: scheduled retraining over a trailing window, first training of new sensors,
and the fitness gate that decides whether a new version replaces the active one.

Training runs on the executors, as scoring does: :mod:`~shared.training.service` decides who is
due and submits a job, :mod:`~shared.training.prepare` writes its chunks, ``scoring.train`` is the
step (files in, files out), :mod:`~shared.training.registration` registers what it fitted, once,
and :mod:`~shared.training.jobs` keeps the job records. The registry (history, activation,
rollback) is :mod:`shared.models.registry`. Import the service from :mod:`shared.training.service`
(this package imports nothing, so the registry can use it too).
"""
