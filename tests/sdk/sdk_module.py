#!/usr/bin/env python3
"""A generic IoT Edge module written only against the public API of the
official Azure IoT Python SDK (azure-iot-device 2.x).

It is started by `iotedge-local run --exec MODULE="python sdk_module.py ..."`
and gets everything it needs from the IOTEDGE_* environment that the runtime
hands to every module, exactly like a module running under the real runtime.

Behaviour:
  * get_twin() -> sends {"kind": "twin", "desired": {...}, "desiredVersion": N}
    to the twin output (desired properties without the "$..." metadata keys).
  * patches reported properties {"started": true}; once the hub accepted it,
    sends {"kind": "reported", "reported": {"started": true}} to the twin output.
  * every message received on the input is echoed to the output: same body,
    same application properties plus echoedBy=sdk_module, same message id,
    correlation id, content type and content encoding.
  * every desired-properties patch -> {"kind": "patch", "patch": {...},
    "version": N} to the twin output.
  * runs until SIGTERM/SIGINT, then disconnects and exits 0.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from azure.iot.device import IoTHubModuleClient, Message

ECHO_MARKER = ("echoedBy", "sdk_module")


def log(text):
    stamp = time.strftime("%H:%M:%S")
    print("[sdk_module %s] %s" % (stamp, text), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default="input1", help="input to echo from (default input1)")
    p.add_argument("--output", default="output1", help="output to echo to (default output1)")
    p.add_argument("--twin-output", default="twinOutput",
                   help="output for twin/reported/patch reports (default twinOutput)")
    p.add_argument("--ready-file", default=None,
                   help="touch this file once subscribed and the twin round trip is done")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to keep retrying client creation/connection")
    p.add_argument("--verbose", action="store_true", help="SDK debug logging")
    return p.parse_args(argv)


def strip_metadata(doc):
    """Desired/patch documents carry "$version" (and possibly "$metadata");
    keep only the user's properties."""
    if not isinstance(doc, dict):
        return doc
    return {k: v for k, v in doc.items() if not k.startswith("$")}


def json_message(body):
    msg = Message(json.dumps(body, sort_keys=True))
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    return msg


def create_client(deadline):
    """create_from_edge_environment() talks to the workload API at once
    (trust bundle + signing); retry while the runtime may still be starting."""
    while True:
        try:
            return IoTHubModuleClient.create_from_edge_environment()
        except Exception as exc:  # OSError / ValueError from the SDK
            if time.monotonic() > deadline:
                raise
            log("create_from_edge_environment failed (%r), retrying" % (exc,))
            time.sleep(1)


def connect(client, deadline):
    while True:
        try:
            client.connect()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log("connect failed (%r), retrying" % (exc,))
            time.sleep(1)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    stop = threading.Event()

    def on_signal(signum, _frame):
        log("signal %d received, stopping" % signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    module_id = os.environ.get("IOTEDGE_MODULEID", "?")
    log("starting as module %s (device %s), input=%s output=%s twin-output=%s" % (
        module_id, os.environ.get("IOTEDGE_DEVICEID", "?"), args.input, args.output,
        args.twin_output))

    deadline = time.monotonic() + args.startup_timeout
    client = create_client(deadline)
    connect(client, deadline)
    log("connected")

    def send(msg, output):
        try:
            client.send_message_to_output(msg, output)
        except Exception as exc:
            log("send to %s failed: %r" % (output, exc))
            raise

    def on_message(message):
        if message.input_name != args.input:
            log("ignoring message on input %r" % (message.input_name,))
            return
        echo = Message(message.data)
        echo.message_id = message.message_id
        echo.correlation_id = message.correlation_id
        echo.content_type = message.content_type
        echo.content_encoding = message.content_encoding
        for key, value in message.custom_properties.items():
            # system properties the hub adds on the way in ($.cdid, $.cmid,
            # $.on, ...) are not application properties: do not echo them.
            if key.startswith("$"):
                continue
            echo.custom_properties[key] = value
        echo.custom_properties[ECHO_MARKER[0]] = ECHO_MARKER[1]
        log("echo input=%s mid=%r cid=%r props=%r -> %s" % (
            message.input_name, message.message_id, message.correlation_id,
            echo.custom_properties, args.output))
        try:
            send(echo, args.output)
        except Exception:
            pass

    def on_patch(patch):
        log("desired patch received: %r" % (patch,))
        body = {"kind": "patch", "patch": strip_metadata(patch),
                "version": patch.get("$version") if isinstance(patch, dict) else None}
        try:
            send(json_message(body), args.twin_output)
        except Exception:
            pass

    # Handlers first (each one makes the SDK subscribe), so that nothing that
    # arrives after the twin report below can be missed.
    client.on_message_received = on_message
    client.on_twin_desired_properties_patch_received = on_patch
    log("handlers set (input + desired patch subscriptions done)")

    twin = client.get_twin()
    log("twin: %r" % (twin,))
    desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
    send(json_message({"kind": "twin", "desired": strip_metadata(desired),
                       "desiredVersion": desired.get("$version")}), args.twin_output)

    reported = {"started": True}
    client.patch_twin_reported_properties(reported)
    log("reported properties patched: %r" % (reported,))
    send(json_message({"kind": "reported", "reported": reported}), args.twin_output)

    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")

    while not stop.wait(0.5):
        pass

    # Disconnect, but never hang the exit on a runtime that is already gone.
    done = threading.Event()

    def shutdown():
        try:
            client.shutdown()
        except Exception as exc:
            log("shutdown error (ignored): %r" % (exc,))
        finally:
            done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    if not done.wait(5):
        log("shutdown did not finish in 5 s")
    log("exiting cleanly")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
