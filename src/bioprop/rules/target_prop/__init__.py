"""Target propagation: every layer learns from a local loss toward a target computed by learned inverses."""
