"""Shared poll subscriptions (Centrifugo 6.8): the node polls the application's backend for the keys its
clients track and pushes what changed."""
