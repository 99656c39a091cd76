"""Labels: the label store over the lake (every label kept, the latest per txn_id wins) and
the intake that brings the `labels` topic into it."""
