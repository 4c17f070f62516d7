"""The admin web UI (Centrifugo's ``admin`` section): login, session tokens, the admin endpoints that run server
API methods through the API executor, a live tail of a channel, and the static single-page app in ``static/``."""
