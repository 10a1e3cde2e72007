"""Where a worker's requests come from and where its replies go: one module per transport.

- `dev`: reads of the worker's clone of /dev/fuse into its seat's buffers, replies written
  back.  Every worker has it: FORGET, BATCH_FORGET and INTERRUPT always come this way, and
  notifications are always written there.
- `entries`: FUSE-over-io_uring.  The kernel writes each request into one of the worker's
  entries and completes its command on the worker's ring; the reply goes back in the entry
  with COMMIT_AND_FETCH.  Registration, takeover from a dead worker, fetch and commit all
  live in that module, as libfuse keeps them in fuse_uring.c.

What `fastpass.worker.Worker` sees of either (it keeps dispatch and the table of requests in
flight, and runs one loop over both):

- the next request: `Dev.read` (a blocking read while nothing is in flight), `Dev.drain`
  (the requests already queued), or an entry's completion on the ring
  (`EntryTransport.receiver`);
- the reply: `reply(slot, unique, error, body)`, from `Dev.replier`, or from
  `EntryTransport.replier`, which answers a request of the device there and one of an entry
  in the entry;
- the seat's journal says which request each slot last answered, whichever replied.

A worker's ring carries both transports' completions and the backing calls'.  Their tags:
`slot << 1 | BACKING` for a slot's backing calls (the call's index in a batch above PART),
`slot << 1` for an entry's command (entries take the slots after the device's buffers), and
POLL for the readiness of the device.
"""

BACKING = 1  # tag bit of a slot's backing calls
POLL = 0  # the tag of the device's readiness poll (slot 0 without the BACKING bit)
