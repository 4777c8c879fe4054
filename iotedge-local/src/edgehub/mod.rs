//! edgeHub: the MQTT/TLS server modules and leaf devices connect to, SAS authentication,
//! routes, store-and-forward to module inputs, and twins.
//!
//! | file | part |
//! |---|---|
//! | [`broker`] | the MQTT 3.1.1 server over TLS: who may publish and subscribe to what |
//! | [`hub`] | the core without the network: identities, routes, queues, sessions, twins |
//! | [`hub_message`] | a message as edgeHub holds it between a PUBLISH and its sinks |
//! | [`endpoint`] | one module's queue: delivery window, time-to-live, redelivery |
//! | [`journal`] | the durable store of the module queues, replayed after a restart |
//! | [`durable`] | what the journal and the `$upstream` store share |
//! | [`twin`] | module and device twins |
//! | [`throttle`] | traffic shaping of what each leaf device publishes |
//! | [`metrics`] | its Prometheus metrics, under IoT Edge's edgeHub names |

pub mod broker;
pub mod durable;
pub mod endpoint;
pub mod hub;
pub mod hub_message;
pub mod journal;
pub mod metrics;
pub mod throttle;
pub mod twin;
