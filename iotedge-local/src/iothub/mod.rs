//! IoT Hub, the cloud side: the `$upstream` store operators read RUL messages from, and file
//! upload with its blob storage. The device registry is the leaf-device key store of the
//! state folder (`runtime_state::keys`).

pub mod files;
pub mod route_test;
pub mod routing;
pub mod storage;
pub mod upstream;
