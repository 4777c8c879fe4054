//! A leaf device's telemetry and a classifier's answer as the pipeline parses them: the
//! scoring contract's request, the router's leaf input and its RUL input. Bad input is an
//! error or a dead letter; the router never lets a body or a property choose the device.
#![no_main]

use edge_protocol::Message;
use libfuzzer_sys::fuzz_target;
use turbofan_domain::ports::properties::CONNECTION_DEVICE_ID;
use turbofan_domain::router::{device_input, rul_input};
use turbofan_domain::scoring::Request;

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse(data, 256 * 1024);

    let mut leaf = Message::new(bytes::Bytes::copy_from_slice(data));
    leaf.connection_device_id = Some("Client_001".into());
    leaf.set_property(CONNECTION_DEVICE_ID, "victim");
    for (_, out) in device_input(leaf, || "2026-12-07T00:00:00Z".into(), || "id".into()) {
        if let Some(device) = out.property(CONNECTION_DEVICE_ID) {
            assert_eq!(device, "Client_001");
        }
    }

    let mut answer = Message::new(bytes::Bytes::copy_from_slice(data));
    answer.set_property(CONNECTION_DEVICE_ID, "Client_001");
    let _ = rul_input(answer, Some(100.0));
});
