"""What the manager's features stand on: request dependencies (:mod:`.deps`), roles and
permissions (:mod:`.rbac`), the application state (:mod:`.appstate`), rate limits
(:mod:`.ratelimit`), the per-request context (:mod:`.context`) and the middleware that
sets it (:mod:`.middleware`). Features import this package; it imports no feature."""
