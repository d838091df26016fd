"""kiln.http: the one HTTP layer of the registry client, the GitHub Actions cache client
and ADD <url>.

- :mod:`kiln.http.retry`: what is retried, for how long (:class:`RetryPolicy`,
  :class:`Budget`), and ``Retry-After``;
- :mod:`kiln.http.clients`: the httpx client factory (User-Agent, system CA store, made
  on first use);
- :mod:`kiln.http.sender`: the send loop (:class:`Sender`) and its neutral errors;
- :mod:`kiln.http.stats`: transfer accounting.

Nothing is imported here, so importing :mod:`kiln.http.stats` does not load httpx.
"""
