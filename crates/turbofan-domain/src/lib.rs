//! The message contracts of the turbofan RUL pipeline (docs/architecture.md §2, §3), as pure functions:
//!
//! - [`numeric`]: a flat JSON object of numbers, parsed without copying keys;
//! - [`scoring`]: the AML scoring contract the classifier honours (features `Sensor1`..`Sensor21`,
//!   output echoing each input object with `PredictedRul`);
//! - [`ports`]: the modules' names, inputs, outputs and shared properties, and the route graph;
//! - [`router`]: what `turbofanRouter` does with `deviceInput` and `rulInput`;
//! - [`record`]: the Avro record (`turbofan.EngineData`) and its JSON input.

pub mod cmapss;
pub mod history;
pub mod numeric;
pub mod ports;
pub mod record;
pub mod router;
pub mod scoring;

/// Names of the model's features, in order.
pub const FEATURES: [&str; 21] = [
    "Sensor1", "Sensor2", "Sensor3", "Sensor4", "Sensor5", "Sensor6", "Sensor7", "Sensor8",
    "Sensor9", "Sensor10", "Sensor11", "Sensor12", "Sensor13", "Sensor14", "Sensor15", "Sensor16",
    "Sensor17", "Sensor18", "Sensor19", "Sensor20", "Sensor21",
];

/// The field the classifier adds.
pub const PREDICTED_RUL: &str = "PredictedRul";
