"""Measuring detection quality the way the product runs.

* :mod:`shared.evaluation.nab`: replay of the product over a NAB-layout folder of labelled real
  series, writing NAB results files for NAB's official scorer (``evaluate nab`` in the CLI).
* :mod:`shared.evaluation.simulated`: simulated fleets with injected anomalies.
"""

from shared.evaluation.nab import NabReplay, replay_nab
from shared.evaluation.simulated import SimulatedReport, evaluate_simulated, simulated_fleet

__all__ = [
    "NabReplay",
    "SimulatedReport",
    "evaluate_simulated",
    "replay_nab",
    "simulated_fleet",
]
