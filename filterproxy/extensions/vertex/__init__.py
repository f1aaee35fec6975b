"""vertex: Google Vertex AI as a provider (``provider: vertex`` clusters).

The parts: `config` (the cluster keys), `auth` (OAuth tokens from google-auth, fetched
off the reactor), `filter` (the glue). google-auth is the ``vertex`` extra:
``pip install 'filterproxy[vertex]'``.
"""
