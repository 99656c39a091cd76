"""Request-time features: computed while the payment waits, from the transaction itself.

They are on-demand views in Feast's ``python`` mode (plain lists in, plain lists out), which
costs microseconds per call where the pandas mode costs milliseconds. The same functions run
in ``get_historical_features``, so training sees the same arithmetic.

Feast stores each function's *source* in the registry and re-executes it with only ``pd`` and
``np`` in scope, so every function here is self-contained: its imports and constants are inside
its body, and it calls no helper defined at module level.

Missing inputs (None, or NaN from a Parquet join) never raise. A missing previous event, home
location or 30-day average gives the sentinel ``-1.0`` (a value no real feature takes), so a
model sees "unknown" as one consistent number. Times are UTC: the hour and weekday are those of
the event time, not of the customer's local clock.
"""

from __future__ import annotations

from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from kestrel_repo.batch_views import customer_batch_features
from kestrel_repo.common import OWNER, tags
from kestrel_repo.stream_views import card_stream_features

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="event_time_us", dtype=Int64),
        Field(name="lat", dtype=Float64),
        Field(name="lon", dtype=Float64),
    ],
    description=("The transaction being scored: amount, event time (µs since the epoch, UTC) "
                 "and where it happened."),
    owner=OWNER,
    tags=tags("request"),
)


@on_demand_feature_view(
    name="txn_request_features",
    sources=[transaction_request],
    schema=[
        Field(name="txn_amount", dtype=Float64),
        Field(name="txn_hour_of_day", dtype=Int64),
        Field(name="txn_is_night", dtype=Int64),
        Field(name="txn_is_weekend", dtype=Int64),
    ],
    mode="python",
    description=("The transaction's own features: amount, UTC hour of day, night flag "
                 "(22:00-06:00) and weekend flag (Saturday, Sunday), as 0/1."),
    owner=OWNER,
    tags=tags("request"),
)
def txn_request_features(inputs: dict) -> dict:
    from kestrel.features.event import hour_of, is_night  # the one definition of night

    amounts: list[float | None] = []
    hours: list[int | None] = []
    nights: list[int | None] = []
    weekends: list[int | None] = []
    for amount, t_us in zip(inputs["amount"], inputs["event_time_us"], strict=True):
        amounts.append(None if amount is None or amount != amount else float(amount))
        if t_us is None or t_us != t_us:
            hours.append(None)
            nights.append(None)
            weekends.append(None)
            continue
        seconds = int(t_us) // 1_000_000
        hour = hour_of(int(t_us))
        weekday = (seconds // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
        hours.append(hour)
        nights.append(1 if is_night(int(t_us)) else 0)
        weekends.append(1 if weekday >= 5 else 0)
    return {"txn_amount": amounts, "txn_hour_of_day": hours, "txn_is_night": nights,
            "txn_is_weekend": weekends}


@on_demand_feature_view(
    name="card_velocity_features",
    sources=[
        transaction_request,
        card_stream_features[["card_last_event_time_us", "card_last_lat", "card_last_lon"]],
    ],
    schema=[
        Field(name="seconds_since_last_txn", dtype=Float64),
        Field(name="km_from_last_txn", dtype=Float64),
    ],
    mode="python",
    description=("Seconds and great-circle km since the card's previous transaction (the "
                 "latest one the stream saw before this one); -1 when there is none. A "
                 "previous event later than this one (possible only online, out of order) "
                 "counts as 0 s."),
    owner=OWNER,
    tags=tags("request", entity="card"),
)
def card_velocity_features(inputs: dict) -> dict:
    import math

    seconds_out, km_out = [], []
    rows = zip(inputs["event_time_us"], inputs["lat"], inputs["lon"],
               inputs["card_last_event_time_us"], inputs["card_last_lat"],
               inputs["card_last_lon"], strict=True)
    for t_us, lat, lon, last_us, last_lat, last_lon in rows:
        if t_us is None or last_us is None or t_us != t_us or last_us != last_us:
            seconds_out.append(-1.0)
        else:
            seconds_out.append(max(0.0, (int(t_us) - int(last_us)) / 1_000_000))
        if any(v is None or v != v for v in (lat, lon, last_lat, last_lon)):
            km_out.append(-1.0)
            continue
        phi1, phi2 = math.radians(last_lat), math.radians(lat)
        half_dphi = (phi2 - phi1) / 2
        half_dlambda = math.radians(lon - last_lon) / 2
        a = (math.sin(half_dphi) ** 2
             + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2)
        km_out.append(2 * 6371.0088 * math.asin(math.sqrt(min(1.0, a))))
    return {"seconds_since_last_txn": seconds_out, "km_from_last_txn": km_out}


@on_demand_feature_view(
    name="customer_context_features",
    sources=[
        transaction_request,
        customer_batch_features[["customer_home_lat", "customer_home_lon",
                                 "customer_avg_amount_30d"]],
    ],
    schema=[
        Field(name="km_from_home", dtype=Float64),
        Field(name="amount_to_avg_30d", dtype=Float64),
    ],
    mode="python",
    description=("Great-circle km from the customer's home location, and the amount divided "
                 "by the customer's 30-day average amount; -1 when home or a positive "
                 "average is unknown."),
    owner=OWNER,
    tags=tags("request", entity="customer"),
)
def customer_context_features(inputs: dict) -> dict:
    import math

    km_out, ratio_out = [], []
    rows = zip(inputs["amount"], inputs["lat"], inputs["lon"], inputs["customer_home_lat"],
               inputs["customer_home_lon"], inputs["customer_avg_amount_30d"], strict=True)
    for amount, lat, lon, home_lat, home_lon, avg in rows:
        if any(v is None or v != v for v in (lat, lon, home_lat, home_lon)):
            km_out.append(-1.0)
        else:
            phi1, phi2 = math.radians(home_lat), math.radians(lat)
            half_dphi = (phi2 - phi1) / 2
            half_dlambda = math.radians(lon - home_lon) / 2
            a = (math.sin(half_dphi) ** 2
                 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2)
            km_out.append(2 * 6371.0088 * math.asin(math.sqrt(min(1.0, a))))
        if amount is None or avg is None or amount != amount or avg != avg or avg <= 0:
            ratio_out.append(-1.0)
        else:
            ratio_out.append(float(amount) / float(avg))
    return {"km_from_home": km_out, "amount_to_avg_30d": ratio_out}
