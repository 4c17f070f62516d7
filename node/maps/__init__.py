"""Map subscriptions (Centrifugo 6.8's keyed state channels): namespace options, the map state store, and the
subscribe phases (state pages, stream catch-up, live) on top of the node's ordinary streams and hub."""
