#!/usr/bin/env python3
"""A leaf (downstream) device written only against the public API of the
official Azure IoT Python SDK (azure-iot-device 2.x).

It connects through the gateway named by GatewayHostName= in its connection
string, trusting the CA certificate given on the command line, sends N JSON
telemetry messages and exits 0 once every one was acknowledged.

Message i:  body {"deviceId": <id>, "seq": i, "value": i * 10}
            content type application/json, encoding utf-8,
            message id <id>-msg-<i>, correlation id corr-<i>,
            application property seq=<i>.
"""

import argparse
import json
import logging
import sys
import time

from azure.iot.device import IoTHubDeviceClient, Message


def log(text):
    print("[sdk_leaf %s] %s" % (time.strftime("%H:%M:%S"), text), flush=True)


def device_id_of(connection_string):
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key == "DeviceId":
            return value
    raise SystemExit("connection string has no DeviceId")


def message_body(device_id, i):
    return {"deviceId": device_id, "seq": i, "value": i * 10}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("connection_string", help="HostName=...;DeviceId=...;SharedAccessKey=...;GatewayHostName=...")
    p.add_argument("ca_file", help="PEM file of the CA that issued the gateway's server certificate")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between messages")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    device_id = device_id_of(args.connection_string)
    with open(args.ca_file) as f:
        ca_pem = f.read()

    client = IoTHubDeviceClient.create_from_connection_string(
        args.connection_string, server_verification_cert=ca_pem)

    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            client.connect()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                log("could not connect: %r" % (exc,))
                return 2
            log("connect failed (%r), retrying" % (exc,))
            time.sleep(1)
    log("connected as %s" % device_id)

    for i in range(args.count):
        msg = Message(json.dumps(message_body(device_id, i)))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        msg.message_id = "%s-msg-%d" % (device_id, i)
        msg.correlation_id = "corr-%d" % i
        msg.custom_properties["seq"] = str(i)
        client.send_message(msg)
        log("sent %d" % i)
        if args.interval:
            time.sleep(args.interval)

    client.shutdown()
    log("done, %d messages sent" % args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
