"""Kestrel's feature definition language: declared stream features and the engines' contract.

``definitions.FEATURES`` lists the features; ``spec.Feature`` is one declaration;
``registry`` holds the aggregations (``aggregations/``, each implemented for the reference,
array and Spark engines); ``inputs`` the event fields and derived inputs they aggregate.
"""

from __future__ import annotations

from kestrel.features.definitions import FEATURES, STREAM_INPUTS
from kestrel.features.event import ENTITIES, ENTITY_KEYS, Entity
from kestrel.features.registry import FeatureSpecError, aggregation, override, registered
from kestrel.features.spec import Feature


def features_for(entity: Entity) -> tuple[Feature, ...]:
    return tuple(f for f in FEATURES if f.entity == entity)


def feature(name: str) -> Feature:
    """The declared stream feature ``name``."""
    for f in FEATURES:
        if f.name == name:
            return f
    raise FeatureSpecError(f"no stream feature is named {name!r}; declare it in "
                           "kestrel/features/definitions.py")


__all__ = ["ENTITIES", "ENTITY_KEYS", "FEATURES", "STREAM_INPUTS", "Entity", "Feature",
           "FeatureSpecError", "aggregation", "feature", "features_for", "override",
           "registered"]
