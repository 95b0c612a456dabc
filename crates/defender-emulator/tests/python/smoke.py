"""Smoke test of the Python azure-eventhub client against the emulator.

Usage: smoke.py CONNECTION_STRING HUB COUNT

Reads the hub and partition properties, sends COUNT Defender envelopes in one batch to
partition "0", receives them back from the start of that partition, and prints one JSON line
with what it saw. Exits non-zero on any failure (and after 90 s whatever happens).
"""

import json
import os
import sys
import threading

from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient


def watchdog(seconds):
    def fire():
        print(json.dumps({"error": "timeout"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main():
    conn, hub, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    watchdog(90)

    producer = EventHubProducerClient.from_connection_string(conn)
    with producer:
        hub_props = producer.get_eventhub_properties()
        part_props = producer.get_partition_properties("0")
        before = part_props["last_enqueued_sequence_number"]
        batch = producer.create_batch(partition_id="0")
        for i in range(count):
            record = {
                "time": "2024-05-14T09:31:07.4473310Z",
                "category": "AdvancedHunting-DeviceEvents",
                "properties": {"DeviceName": "py-%d" % i, "ReportId": i},
            }
            batch.add(EventData(json.dumps({"records": [record]})))
        producer.send_batch(batch)

    received = []
    done = threading.Event()
    consumer = EventHubConsumerClient.from_connection_string(conn, consumer_group="$Default")

    def on_event(partition_context, event):
        if event is None:
            return
        received.append(
            {
                "sequence_number": event.sequence_number,
                "offset": event.offset,
                "enqueued": event.enqueued_time is not None,
                "body": event.body_as_str(),
            }
        )
        if len(received) >= before + 1 + count:
            done.set()

    thread = threading.Thread(
        target=consumer.receive,
        kwargs={"on_event": on_event, "partition_id": "0", "starting_position": "-1", "max_wait_time": 5},
        daemon=True,
    )
    thread.start()
    ok = done.wait(60)
    consumer.close()
    thread.join(10)

    ours = [json.loads(r["body"])["records"][0]["properties"]["DeviceName"] for r in received[before + 1 :]]
    print(
        json.dumps(
            {
                "hub": hub_props["eventhub_name"],
                "partition_ids": hub_props["partition_ids"],
                "before": before,
                "received": len(received),
                "sequence_numbers": [r["sequence_number"] for r in received],
                "all_have_offset_and_time": all(r["offset"] is not None and r["enqueued"] for r in received),
                "ours_in_order": ours == ["py-%d" % i for i in range(count)],
            }
        ),
        flush=True,
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
