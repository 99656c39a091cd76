"""One day's transactions as parallel numpy arrays, before they become an Arrow table.

Generating, marking fraud and injecting fraud bursts all work on whole columns at once; ids
and strings are only attached at the end (see generator.py), by gathering from per-run
lookup arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_DEVICE = -1


@dataclass
class Txns:
    """Columns of one day's transactions; indices point into the run's Population.

    ``device`` is NO_DEVICE (card present), a customer index (that customer's usual device)
    or ``n_customers + j`` for ``new_devices[j]``, a device seen for the first time that day.
    """

    time_us: np.ndarray  # microseconds since the day's midnight UTC
    customer: np.ndarray
    card: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    device: np.ndarray
    scenario: np.ndarray  # int8, 0 = legit
    new_devices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.time_us)

    @staticmethod
    def empty() -> Txns:
        i64 = np.zeros(0, dtype=np.int64)
        return Txns(i64, i64, i64, i64, np.zeros(0), i64, np.zeros(0, dtype=np.int8))

    def take(self, index: np.ndarray) -> Txns:
        return Txns(self.time_us[index], self.customer[index], self.card[index],
                    self.terminal[index], self.amount[index], self.device[index],
                    self.scenario[index], list(self.new_devices))


def concat(parts: list[Txns], n_customers: int) -> Txns:
    """All parts in order, renumbering each part's new devices after the previous parts'."""
    if not parts:
        return Txns.empty()
    devices: list[np.ndarray] = []
    new_devices: list[str] = []
    for part in parts:
        shifted = part.device.copy()
        shifted[shifted >= n_customers] += len(new_devices)
        devices.append(shifted)
        new_devices.extend(part.new_devices)
    return Txns(
        time_us=np.concatenate([p.time_us for p in parts]),
        customer=np.concatenate([p.customer for p in parts]),
        card=np.concatenate([p.card for p in parts]),
        terminal=np.concatenate([p.terminal for p in parts]),
        amount=np.concatenate([p.amount for p in parts]),
        device=np.concatenate(devices),
        scenario=np.concatenate([p.scenario for p in parts]),
        new_devices=new_devices,
    )
