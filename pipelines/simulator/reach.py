"""Which terminals each customer can reach: every terminal within a radius.

5,000 customers × 10,000 terminals is 50 M distances, most of them pointless. Terminals are
bucketed into square cells as wide as the radius, so a customer only measures the terminals of
its own and the eight neighbouring cells. The result is kept as CSR arrays (``offsets`` and one
flat array of terminal indices) instead of a Python list per customer: compact, and the daily
generator picks terminals for all transactions at once with one gather.
"""

from __future__ import annotations

import numpy as np


def terminals_within(
    cust_x: np.ndarray,
    cust_y: np.ndarray,
    term_x: np.ndarray,
    term_y: np.ndarray,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(offsets, terminals)``: customer i reaches ``terminals[offsets[i]:offsets[i+1]]``.

    A terminal is reachable when its Euclidean distance is strictly below ``radius``; each
    customer's terminals are listed in increasing index order.
    """
    if radius <= 0:
        raise ValueError("radius must be positive")
    n_cust, n_term = len(cust_x), len(term_x)
    x0 = min(np.min(cust_x, initial=0.0), np.min(term_x, initial=0.0))
    y0 = min(np.min(cust_y, initial=0.0), np.min(term_y, initial=0.0))
    t_col = ((term_x - x0) // radius).astype(np.int64)
    t_row = ((term_y - y0) // radius).astype(np.int64)
    c_col = ((cust_x - x0) // radius).astype(np.int64)
    c_row = ((cust_y - y0) // radius).astype(np.int64)
    n_cols = int(max(t_col.max(initial=0), c_col.max(initial=0))) + 1
    n_rows = int(max(t_row.max(initial=0), c_row.max(initial=0))) + 1

    t_cell = t_row * n_cols + t_col
    by_cell = np.argsort(t_cell, kind="stable")
    cell_start = np.searchsorted(t_cell[by_cell], np.arange(n_rows * n_cols + 1))

    customers, terminals = [], []
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            row, col = c_row + d_row, c_col + d_col
            ok = (row >= 0) & (row < n_rows) & (col >= 0) & (col < n_cols)
            who = np.flatnonzero(ok)
            cell = row[ok] * n_cols + col[ok]
            start, count = cell_start[cell], cell_start[cell + 1] - cell_start[cell]
            cust = np.repeat(who, count)
            # position k of customer j's candidates is start_j + (k - first index of j)
            first = np.repeat(np.cumsum(count) - count, count)
            pos = np.repeat(start, count) + np.arange(len(cust)) - first
            term = by_cell[pos]
            dist2 = (cust_x[cust] - term_x[term]) ** 2 + (cust_y[cust] - term_y[term]) ** 2
            near = dist2 < radius * radius
            customers.append(cust[near])
            terminals.append(term[near])

    cust_all = np.concatenate(customers)
    term_all = np.concatenate(terminals)
    order = np.lexsort((term_all, cust_all))
    counts = np.bincount(cust_all, minlength=n_cust)
    offsets = np.zeros(n_cust + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = term_all[order].astype(np.int32 if n_term < 2**31 else np.int64)
    return offsets, flat
