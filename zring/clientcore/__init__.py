"""The client core: everything Client and AsyncClient share, with no sockets and no clock.

Its modules, each one concern:

- ``options``: seeds, argument checks;
- ``results``: the result types and the reply -> body -or-error rule, per-key errors;
- ``stamps``: the client's write stamps and when a refused write may be stamped again;
- ``retry``: the retry policy (attempts and backoff) and one request's tries;
- ``routing``: the ring a token-aware client routes by (time is passed in);
- ``direct``: the quorums a token-aware client coordinates itself while the ring is
  settled (reads, writes, batches over the key's replicas; a node coordinates the rest);
- ``batches``: cutting a batch into frames and putting its results back in order;
- ``commands``: the public API as generators of transport effects (Exchange, Sleep,
  Gossip), driven by a transport: zring.client (blocking) and zring.aio (asyncio).

Nothing here imports zmq, asyncio or time (``now`` is passed in; a transport gives the
clocks), so every rule can be tested without a socket.
"""
