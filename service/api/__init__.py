"""HTTP routes, one router per resource: they validate and translate, the service layer acts
(`ingest`, `indexing`, `recommender`, `rollout`), reached through the aliases in `deps`."""
