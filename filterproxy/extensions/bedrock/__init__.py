"""bedrock: AWS Bedrock as a provider (``provider: bedrock`` clusters).

The parts: `config` (the cluster keys), `wire` (InvokeModel's request and stream, pure),
`eventstream` (AWS's binary framing, pure), `auth` (SigV4 credentials
fetched off the reactor, or an API key), `filter` (the glue). botocore is the
``bedrock`` extra: ``pip install 'filterproxy[bedrock]'``.
"""
