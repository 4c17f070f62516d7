"""Client authentication: verification of Centrifugo connection and subscription JWTs."""
