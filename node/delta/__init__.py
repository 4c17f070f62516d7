"""Delta compression of publication payloads for subscribers that negotiated it."""
