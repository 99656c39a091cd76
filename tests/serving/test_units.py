"""Pure parts of serving: the rules engine, insight composition, rate-limit overrides. No
services (Feast value decoding: tests/features/test_feast_codec.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kestrel.errors import ConfigError
from kestrel.events import TransactionEvent
from serving.decisions import reason_text
from serving.insights import compose
from serving.ratelimit import Limit, parse_overrides
from serving.rules import DEFAULT_RULES, RulesEngine


def _event(**over: object) -> TransactionEvent:
    doc: dict[str, object] = {
        "txn_id": "t1", "event_time": datetime(2018, 6, 1, tzinfo=UTC), "customer_id": "C1",
        "account_id": "A1", "card_id": "card-1", "terminal_id": "T1", "mcc": "5411",
        "amount": 20.0, "currency": "EUR", "country": "FR", "lat": 1.0, "lon": 2.0,
        "channel": "pos"}
    doc.update(over)
    return TransactionEvent.model_validate(doc)


def test_rules_thresholds_and_severity() -> None:
    rules = RulesEngine.from_file(DEFAULT_RULES)
    tags = {"challenge": 0.4, "decline": 0.7}
    assert rules.decide(_event(), 0.1, tags).action == "allow"
    assert rules.decide(_event(), 0.5, tags).action == "challenge"
    assert rules.decide(_event(), 0.7, tags).action == "decline"
    assert rules.decide(_event(), 0.5, {}).action == "challenge"  # default 0.5 from the YAML
    blocked = rules.decide(_event(country="KP"), 0.01, tags)
    assert blocked.action == "decline" and blocked.hits[0].rule == "blocked_country"
    # a rule's challenge is not softened by a low score; a high score beats a rule's challenge
    assert rules.decide(_event(amount=6000.0), 0.01, tags).action == "challenge"
    assert rules.decide(_event(amount=6000.0), 0.9, tags).action == "decline"
    # degraded: rules alone, with the degraded amount cap
    assert rules.decide(_event(amount=100.0), None, tags).action == "allow"
    assert rules.decide(_event(amount=600.0), None, tags).action == "challenge"


def test_batch_decisions_equal_the_rules_applied_one_by_one() -> None:
    """decide_many skips rule evaluation for events its prefilter clears: on a mix of
    events at, below and above every limit, blocked and not, scored and degraded, each
    outcome is what every rule evaluated on that event alone gives."""
    from serving.rules import SEVERITY

    rules = RulesEngine.from_file(DEFAULT_RULES)
    lim = rules.config.amount_limits
    edges = [v for v in (lim.decline_above, lim.challenge_above,
                         *lim.challenge_above_by_channel.values(),
                         rules.config.degraded.challenge_above) if v is not None]
    amounts = sorted({1.0, *edges, *(e + 0.01 for e in edges), *(e - 0.01 for e in edges)})
    events = [_event(amount=a, channel=ch, country=c)
              for a in amounts for ch in ("pos", "ecom", "atm") for c in ("FR", "KP")]
    tags = {"challenge": 0.4, "decline": 0.7}
    challenge, decline = rules.thresholds(tags)
    for score in (None, 0.1, 0.5, 0.9):
        got = rules.decide_many(events, [score] * len(events), tags)
        for ev, outcome in zip(events, got, strict=True):
            hits = rules.rule_hits(ev, degraded=score is None)
            actions = [h.action for h in hits]
            if score is not None:
                actions.append("decline" if score >= decline else
                               "challenge" if score >= challenge else "allow")
            expected = max(actions, key=SEVERITY.__getitem__, default="allow")
            assert (outcome.action, outcome.hits) == (expected, tuple(hits)), (ev, score)


def test_bad_rules_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("blocked: {planets: [mars]}\n")
    with pytest.raises(ConfigError, match="invalid"):
        RulesEngine.from_file(bad)
    with pytest.raises(ConfigError, match="KESTREL_RULES_PATH"):
        RulesEngine.from_file(tmp_path / "missing.yaml")


def test_compose_partial_sources() -> None:
    assert compose("C1", None, [], []) is None
    recent = [{"txn_id": "r1", "event_time": "2018-06-02T10:00:00Z", "amount": 7.5,
               "mcc": "5541"}]
    doc = compose("C1", None, recent, [])
    assert doc is not None
    assert doc["today"] == "2018-06-02" and doc["spend_7d"] == 7.5
    assert doc["top_categories"] == [{"category": "fuel", "amount": 7.5}]
    assert doc["sources"] == {"insight_doc": False, "recent_transactions": True,
                              "alerts": False, "cases": "ok"}
    alert_only = compose("C1", None, [], [{"alert_id": "a"}])
    assert alert_only is not None and alert_only["risk_level"] == "high"


def test_rate_limit_overrides() -> None:
    assert parse_overrides("a=1:2, b=0.5:10") == {"a": Limit(1.0, 2.0), "b": Limit(0.5, 10.0)}
    assert parse_overrides(None) == {}
    with pytest.raises(ConfigError, match="client=rate:burst"):
        parse_overrides("oops")


def test_rs256_tokens_verified_with_keys_from_a_jwks_url(tmp_path: Path) -> None:
    """The production path: the identity provider's JWKS served over HTTP by this test."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kestrel.errors import EventValidationError
    from serving.auth import Authenticator, AuthError, mint_token
    from tests.conftest import make_settings

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # production: an identity provider's JWKS; HS256 off although a secret is set
        settings = make_settings(tmp_path, env="prod", jwt_audience="kestrel-api",
                                 jwt_jwks_url=f"http://127.0.0.1:{server.server_port}/jwks")
        auth = Authenticator(settings)
        now = int(time.time())
        claims = {"sub": "auth0|5f1c2", "role": "investigator", "client": "console",
                  "aud": "kestrel-api", "iss": "kestrel", "iat": now, "exp": now + 600}

        def rs(**over: object) -> str:
            return "Bearer " + jwt.encode({**claims, **over}, key, algorithm="RS256",
                                          headers={"kid": "k1"})

        who = auth.principal(rs())
        assert (who.subject, who.role, who.client) == ("auth0|5f1c2", "investigator", "console")
        assert auth.principal(rs(sub="a@bank.com", tenant="t", client=None)).client == "t"
        hs = jwt.encode(claims, settings.secret("jwt_secret"), algorithm="HS256")
        with pytest.raises(AuthError, match="not accepted"):
            auth.principal(f"Bearer {hs}")
        with pytest.raises(AuthError, match=r"(?i)audience"):
            auth.principal(rs(aud="someone-else"))
        with pytest.raises(AuthError, match="longer than 3600"):
            auth.principal(rs(exp=now + 7200))
        with pytest.raises(AuthError, match="customer"):
            auth.principal(rs(role="bot"))
        assert auth.principal(rs(role="bot", customer_id="C7")).customer == "C7"
        with pytest.raises(EventValidationError) as info:
            auth.principal(rs(sub="4111-1111-1111-1111"))
        assert info.value.errors[0].path == "authorization.sub"
        assert "4111" not in str(info.value)
        # `kestrel token` mints nothing in production
        with pytest.raises(ConfigError, match="KESTREL_ENV=prod"):
            mint_token(settings, "admin", "ops")
    finally:
        server.shutdown()


def test_native_scoring_equals_xgboost_predict() -> None:
    """The direct C-API path gives XGBoost's own probabilities and TreeSHAP values, bit for
    bit, with missing values, for one row and for a subset of a batch."""
    import numpy as np
    import xgboost

    from serving.features import FeatureFrame
    from serving.model import LoadedModel, serving_booster

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + x[:, 3] > 1).astype(int)
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    fitted = xgboost.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(x, y)
    features = tuple(f"f{i}" for i in range(6))
    model = LoadedModel("1", features, serving_booster(fitted.get_booster(), features))
    rows = model.matrix(FeatureFrame(features, x.copy()))
    reference = fitted.get_booster()
    expected = reference.predict(xgboost.DMatrix(x))
    assert np.array_equal(model.probabilities(rows), expected)
    which = [3, 17, 250]
    assert np.array_equal(model.contributions(rows, which),
                          reference.predict(xgboost.DMatrix(x[which]), pred_contribs=True))
    # every row: the multi-threaded scorer a batch uses gives the same values
    assert np.array_equal(model.contributions(rows, list(range(len(x)))),
                          reference.predict(xgboost.DMatrix(x), pred_contribs=True))
    # a frame in another column order, without f2 and with a column the model does not
    # know: the model's order, f2 missing, the extra column ignored
    order = [4, 0, 5, 3, 1]
    shuffled = FeatureFrame((*(features[j] for j in order), "other"),
                            np.hstack([x[:3, order], np.ones((3, 1))]))
    got = model.matrix(shuffled).x
    assert np.isnan(got[:, 2]).all()
    assert np.array_equal(np.delete(got, 2, axis=1), np.delete(x[:3], 2, axis=1),
                          equal_nan=True)
    one = model.matrix(FeatureFrame(features, x[5:6].copy()))
    assert np.array_equal(model.probabilities(one), expected[5:6])
    assert model.contributions(one, [0]).shape == (1, len(features) + 1)


@pytest.mark.parametrize(("feature", "value", "words"), [
    ("km_from_home", -1.0, "the customer's home location is not known"),
    ("km_from_last_txn", -1.0, "the card has no earlier payment to compare with"),
    ("seconds_since_last_txn", -1.0, "the card has no earlier payment to compare with"),
    ("amount_to_avg_30d", -1.0, "the customer has no 30-day average amount yet"),
    ("card_txn_count_1h", float("nan"), "card txn count 1h is not known"),
])
def test_a_reason_never_shows_a_sentinel(feature: str, value: float, words: str) -> None:
    """Issue 32 item 4: 'the payment is -1 km from the customer's home' said in words."""
    text = reason_text(feature, value)
    assert text == words and "-1" not in text and "nan" not in text.lower()


def test_a_reason_shows_a_real_value_with_its_unit() -> None:
    assert reason_text("km_from_home", 0.0) == "the payment is 0 km from the customer's home"
    assert reason_text("km_from_home", 1234.4) == "the payment is 1234 km from the customer's home"
    assert reason_text("card_txn_count_1h", 6.0) == "card txn count 1h is 6"
