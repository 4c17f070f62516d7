"""Proxies to the application backend (Centrifugo's "proxy events to the backend"): HTTP, GRPC and in-process
handlers for connect, refresh, subscribe, publish, sub_refresh and RPC; see ``manager.py`` for the wiring."""
