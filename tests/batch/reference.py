"""An independent pandas computation of the batch tables, straight from their definitions."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from kestrel.lake import read_table
from kestrel.mcc import category_of


def lake_frames(lake_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    tx = read_table(lake_dir, "transactions").to_pandas()
    labels = read_table(lake_dir, "labels").to_pandas()
    return tx, labels


def cut_off(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC")


def customer_rows(tx: pd.DataFrame, day: date) -> pd.DataFrame:
    c = cut_off(day)
    month = tx[(tx.event_time >= c - pd.Timedelta(days=30)) & (tx.event_time < c)]
    out = pd.DataFrame(index=pd.Index(sorted(set(month.customer_id)), name="customer_id"))
    for n in (1, 7, 30):
        w = tx[(tx.event_time >= c - pd.Timedelta(days=n)) & (tx.event_time < c)]
        g = w.groupby("customer_id").amount
        out[f"customer_txn_count_{n}d"] = g.count()
        out[f"customer_avg_amount_{n}d"] = g.mean()
        if n == 30:
            out["customer_home_lat"] = w.groupby("customer_id").lat.mean()
            out["customer_home_lon"] = w.groupby("customer_id").lon.mean()
    for n in (1, 7, 30):
        out[f"customer_txn_count_{n}d"] = out[f"customer_txn_count_{n}d"].fillna(0).astype(int)
    return out


def terminal_rows(tx: pd.DataFrame, labels: pd.DataFrame, day: date, delay: int
                  ) -> pd.DataFrame:
    c = cut_off(day)
    known = labels[labels.labelled_at < c].sort_values("labelled_at")
    latest = known.drop_duplicates("txn_id", keep="last")
    frauds = set(latest[latest.is_fraud].txn_id)
    counts, risks = {}, {}
    for n in (1, 7, 30):
        w = tx[(tx.event_time >= c - pd.Timedelta(days=n)) & (tx.event_time < c)]
        counts[n] = w.groupby("terminal_id").size()
        lo, hi = c - pd.Timedelta(days=delay + n), c - pd.Timedelta(days=delay)
        s = tx[(tx.event_time >= lo) & (tx.event_time < hi)]
        risks[n] = s.assign(f=s.txn_id.isin(frauds)).groupby("terminal_id").f.mean()
    index = counts[30].index.union(risks[30].index)
    out = pd.DataFrame(index=index)
    for n in (1, 7, 30):
        out[f"terminal_txn_count_{n}d"] = counts[n].reindex(index).fillna(0).astype(int)
    for n in (1, 7, 30):
        out[f"terminal_fraud_risk_{n}d"] = risks[n].reindex(index)
    return out


def read_partition(folder: Path, key: str, value: str) -> pd.DataFrame:
    data = ds.dataset(folder, format="parquet", partitioning="hive")
    return data.to_table(filter=ds.field(key) == value).to_pandas()


def daily_category(tx: pd.DataFrame, day: date) -> pd.DataFrame:
    d = tx[tx.event_time.dt.date == day].assign(category=lambda f: f.mcc.map(category_of))
    g = d.groupby(["customer_id", "category"]).amount
    return pd.DataFrame({"amount": g.sum().round(2), "count": g.count()})


def monthly(tx: pd.DataFrame, month: str) -> pd.DataFrame:
    m = tx.assign(month=tx.event_time.dt.strftime("%Y-%m"))
    prev_month = (pd.Period(month, "M") - 1).strftime("%Y-%m")
    cur = m[m.month == month].groupby("customer_id").amount.agg(["sum", "count"])
    prev = m[m.month == prev_month].groupby("customer_id").amount.sum()
    index = cur.index.union(prev.index)
    out = pd.DataFrame(index=index)
    out["amount"] = cur["sum"].reindex(index).fillna(0.0).round(2)
    out["count"] = cur["count"].reindex(index).fillna(0).astype(int)
    p = prev.reindex(index)
    out["mom_change"] = np.where(p > 0, (cur["sum"].reindex(index).fillna(0.0) / p - 1), np.nan)
    return out
