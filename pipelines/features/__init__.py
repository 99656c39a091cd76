"""Kestrel's side of Feast: the store built from Settings, `apply`, the fast online writer."""
