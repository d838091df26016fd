"""The GitHub Actions cache protocol: the client behind ``type=gha`` and the server behind
``kiln cache serve``, sharing only the scope model."""
