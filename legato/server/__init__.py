"""legato.server: the REST service (`legato serve`).

`app.create_app(state)` builds the FastAPI app from a `state.ServerState` (`state.build_state`);
`runs.RunManager` takes REST runs from request to durable record; `store` holds the SQLite and
Redis run stores; `auth` has tenants, API keys and quotas; `commands` the CLI.
"""
