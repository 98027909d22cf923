"""Events: the typed change log of every resource (``GET /v1/events``) and its live stream."""
