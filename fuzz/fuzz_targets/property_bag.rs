//! A property bag as a client writes it in its topic: decoded, and stamped by edgeHub with
//! the identity it authenticated. Whatever the bag says, the stamped message names the
//! authenticated device and module and no other (issue #26: no device speaks for another).
#![no_main]

use edge_protocol::properties::{self, Direction, Stamps};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bag) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = properties::decode(bag);
    let _ = properties::encode(&decoded, Direction::ToHub);
    for module in [None, Some("sender")] {
        let stamps = Stamps {
            connection_device_id: "edge-device",
            connection_module_id: module,
            enqueued_time: "2026-12-07T00:00:00.0000000Z",
        };
        let restamped = properties::restamp(bag, &stamps);
        let m = properties::decode(&restamped.bag);
        assert_eq!(
            m.connection_device_id.as_deref(),
            Some("edge-device"),
            "{bag:?}"
        );
        assert_eq!(m.connection_module_id.as_deref(), module, "{bag:?}");
    }
});
