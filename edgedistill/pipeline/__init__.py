"""The chain: run folder and manifests (:mod:`.context`), the stages (:mod:`.stages`), and the
ordered list that runs them (:mod:`.run`). Libraries never import this package."""
