"""The array apply path: a batch's events applied per partition and entity type at once, on
sorted numpy arrays (the hand-optimised code of the stream). ``ArrayPath`` implements the
same ApplyPath (pipelines/stream/apply_path.py) as the per-event reference
(pipelines/stream/per_event.py); tests and parity compare the two."""
