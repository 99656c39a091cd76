"""The stream processor: event-time window features per card, customer and terminal."""
