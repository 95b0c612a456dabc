"""Reference consumer for `cargo bench -p defender-forwarder --bench compare`.

What users run today to get Defender events from an Event Hub into Sekoia.io is a Python connector
built on the official `azure-eventhub` package. This is our own small consumer written the same
way, so that the forwarder can be measured against it on the same machine, hub and intake:

- `azure.eventhub.aio.EventHubConsumerClient` with `receive_batch` (default `max_batch_size`
  300 and `prefetch` 300, `max_wait_time` 10 s) and one callback per partition batch; partitions
  are claimed greedily through the checkpoint store, as the SDK does by default;
- each event body `{"records": [...]}` is parsed with `json` and every record re-serialised as one
  intake event (compact, non-ASCII kept);
- the events of a callback are posted to `POST {intake}/batch` as `{"intake_key": ..., "jsons":
  [...]}`, gzip (level 1, like the forwarder), in requests of at most `--batch-events` events and
  `--batch-bytes` event bytes (the forwarder's defaults), up to `--concurrency` at once over one
  `aiohttp` session; a failed request is retried after a pause;
- once every request of the callback succeeded, the partition is checkpointed with
  `partition_context.update_checkpoint()` into `BlobCheckpointStore` (the aio one; Azurite in the
  benchmark), or into the SDK's in-memory store with `--checkpoint-store memory`;
- it exits once it has posted `--records` records (or after `--max-seconds`), printing one JSON
  line: records, requests, checkpoints, seconds, checkpoint store.

Differences from the connector, each in the reference's favour or neutral: the pure-Python AMQP
transport (the connector asks for uamqp, which has no wheels for current Pythons), the backlog is
read from the start (the connector's default start position skips it), no per-push rate limit
unless `--pushes-per-second` is given, no metrics or logging per push.

Needs: azure-eventhub==5.15.1, azure-eventhub-checkpointstoreblob-aio==1.2.0 (brings aiohttp).
"""

import argparse
import asyncio
import gzip
import json
import sys
import time

import aiohttp
from azure.eventhub.aio import EventHubConsumerClient


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connection-string", required=True, help="Event Hubs connection string with EntityPath")
    p.add_argument("--consumer-group", default="$Default")
    p.add_argument("--intake-url", required=True, help="base URL; requests go to {url}/batch")
    p.add_argument("--intake-key", required=True)
    p.add_argument("--records", type=int, required=True, help="exit once this many records are posted")
    p.add_argument("--max-seconds", type=float, default=0, help="also exit after this long (0: no limit)")
    p.add_argument("--checkpoint-store", choices=["blob", "memory"], default="blob")
    p.add_argument("--storage-connection-string", help="blob store: storage account connection string")
    p.add_argument("--container", help="blob store: container (must exist)")
    p.add_argument("--batch-events", type=int, default=1000)
    p.add_argument("--batch-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=300, help="events per receive_batch callback")
    p.add_argument("--prefetch", type=int, default=300)
    p.add_argument("--no-gzip", action="store_true")
    p.add_argument("--pushes-per-second", type=float, default=0, help="limit callbacks' pushes (0: none)")
    args = p.parse_args(argv)
    if args.checkpoint_store == "blob" and not (args.storage_connection_string and args.container):
        p.error("--checkpoint-store blob needs --storage-connection-string and --container")
    return args


def records_of(event):
    """The records of one event body: `{"records": [...]}`, a bare list, or one object."""
    body = json.loads(event.body_as_str())
    if isinstance(body, dict) and "records" in body:
        return body["records"] or []
    if isinstance(body, list):
        return body
    return [body]


def chunks(events, max_events, max_bytes):
    """Splits serialised events into requests of at most max_events events and max_bytes bytes."""
    chunk, size = [], 0
    for e in events:
        n = len(e)
        if chunk and (len(chunk) >= max_events or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        yield chunk


class Reference:
    def __init__(self, args):
        self.args = args
        self.url = args.intake_url.rstrip("/") + "/batch"
        self.posted = 0
        self.requests = 0
        self.checkpoints = 0
        self.retries = 0
        self.done = asyncio.Event()
        self.slots = asyncio.Semaphore(args.concurrency)
        self.session = None
        self.next_push = 0.0

    async def post(self, chunk):
        body = json.dumps({"intake_key": self.args.intake_key, "jsons": chunk}).encode()
        headers = {"Content-Type": "application/json"}
        if not self.args.no_gzip:
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        async with self.slots:
            while True:
                try:
                    async with self.session.post(self.url, data=body, headers=headers) as response:
                        answer = await response.read()
                        if response.status == 200:
                            ids = json.loads(answer).get("event_ids", [])
                            if len(ids) != len(chunk):
                                print(f"intake answered {len(ids)} ids for {len(chunk)} events", file=sys.stderr)
                            self.requests += 1
                            return
                        print(f"intake answered {response.status}: {answer[:200]!r}", file=sys.stderr)
                except aiohttp.ClientError as e:
                    print(f"post failed: {e}", file=sys.stderr)
                self.retries += 1
                await asyncio.sleep(1)

    async def on_event_batch(self, partition_context, events):
        if not events or self.done.is_set():
            return
        if self.args.pushes_per_second > 0:
            now = time.monotonic()
            wait, self.next_push = self.next_push - now, max(now, self.next_push) + 1 / self.args.pushes_per_second
            if wait > 0:
                await asyncio.sleep(wait)
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        jsons = [dumps(r) for event in events for r in records_of(event) if r is not None]
        await asyncio.gather(*(self.post(c) for c in chunks(jsons, self.args.batch_events, self.args.batch_bytes)))
        self.posted += len(jsons)
        await partition_context.update_checkpoint(events[-1])
        self.checkpoints += 1
        if self.posted >= self.args.records:
            self.done.set()

    async def on_error(self, partition_context, error):
        partition = partition_context.partition_id if partition_context else None
        print(f"error on partition {partition}: {error!r}", file=sys.stderr)

    async def run(self):
        args = self.args
        store = None
        if args.checkpoint_store == "blob":
            from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

            store = BlobCheckpointStore.from_connection_string(args.storage_connection_string, args.container)
        client = EventHubConsumerClient.from_connection_string(
            args.connection_string, consumer_group=args.consumer_group, checkpoint_store=store
        )
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
            self.session = session
            receiving = asyncio.ensure_future(
                client.receive_batch(
                    on_event_batch=self.on_event_batch,
                    on_error=self.on_error,
                    max_batch_size=args.max_batch_size,
                    max_wait_time=10,
                    prefetch=args.prefetch,
                    starting_position="-1",
                )
            )
            waiting = asyncio.ensure_future(self.done.wait())
            timeout = args.max_seconds if args.max_seconds > 0 else None
            await asyncio.wait([receiving, waiting], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            elapsed = time.monotonic() - started
            await client.close()
            for task in (receiving, waiting):
                task.cancel()
            await asyncio.gather(receiving, waiting, return_exceptions=True)
        if store is not None:
            await store.close()
        print(
            json.dumps(
                {
                    "records": self.posted,
                    "requests": self.requests,
                    "retries": self.retries,
                    "checkpoints": self.checkpoints,
                    "seconds": round(elapsed, 3),
                    "checkpoint_store": "blob" if store is not None else "memory",
                    "complete": self.posted >= args.records,
                }
            ),
            flush=True,
        )
        return 0 if self.posted >= args.records or args.max_seconds > 0 else 1


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    sys.exit(asyncio.run(Reference(args).run()))


if __name__ == "__main__":
    main()
