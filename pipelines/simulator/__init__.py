"""Simulated card transactions with known fraud, for training, tests, demos and benchmarks.

A re-implementation, from its description, of the transaction generator of the *Reproducible
Machine Learning for Credit Card Fraud Detection* handbook (Le Borgne et al.), extended with
Kestrel's fields (cards, devices, MCCs, countries) and two more fraud scenarios (card testing,
account takeover). Everything is deterministic by seed, and any day can be generated alone.
"""

from pipelines.simulator.config import SCENARIO_NAMES, SimulationConfig
from pipelines.simulator.generator import DayBatch, Simulator, iter_days
from pipelines.simulator.labels import labels_for
from pipelines.simulator.to_lake import SimulationSummary, write_to_lake

__all__ = [
    "SCENARIO_NAMES",
    "DayBatch",
    "SimulationConfig",
    "SimulationSummary",
    "Simulator",
    "iter_days",
    "labels_for",
    "write_to_lake",
]
