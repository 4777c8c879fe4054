//! The route graph's names in one place: each module's name, inputs and outputs, the message
//! properties that cross module boundaries, and the edges `deployment.template.json` wires
//! between them (a test, `tests/ports.rs`, checks these against the manifest's routes).
//!
//! ```text
//! leaf devices ──▶ turbofanRouter/deviceInput
//! turbofanRouter/classOutput ──▶ turbofanRulClassifier/amlInput
//! turbofanRulClassifier/amlOutput ──▶ turbofanRouter/rulInput
//! turbofanRouter/hubOutput ──▶ $upstream (IoT Hub: the RUL messages)
//! turbofanRouter/avroOutput ──▶ avroFileWriter/avroModuleInput
//! turbofanRouter/deadMessages ──▶ $upstream (dead letters)
//! ```

/// `turbofanRouter`: routes telemetry to the classifier and its answers to IoT Hub and the
/// Avro writer.
pub mod router {
    /// The module's name in the manifest.
    pub const MODULE: &str = "turbofanRouter";
    /// Input from leaf devices.
    pub const DEVICE_INPUT: &str = "deviceInput";
    /// Input from the classifier.
    pub const RUL_INPUT: &str = "rulInput";
    /// Output to the classifier.
    pub const CLASS_OUTPUT: &str = "classOutput";
    /// Output to IoT Hub (RUL messages).
    pub const HUB_OUTPUT: &str = "hubOutput";
    /// Output to the Avro writer.
    pub const AVRO_OUTPUT: &str = "avroOutput";
    /// Output for bad messages (to IoT Hub).
    pub const DEAD_OUTPUT: &str = "deadMessages";
}

/// `turbofanRulClassifier`: the Azure ML scoring contract over edgeHub.
pub mod classifier {
    /// The module's name in the manifest.
    pub const MODULE: &str = "turbofanRulClassifier";
    /// The input it scores.
    pub const AML_INPUT: &str = "amlInput";
    /// The output it answers on.
    pub const AML_OUTPUT: &str = "amlOutput";
}

/// `avroFileWriter`: archives the full records in Avro files and uploads them.
pub mod writer {
    /// The module's name in the manifest.
    pub const MODULE: &str = "avroFileWriter";
    /// The module's input.
    pub const INPUT: &str = "avroModuleInput";
}

/// Message properties that one module sets and another reads.
pub mod properties {
    /// The leaf device a message came from (the router sets it from edgeHub's stamp; the
    /// classifier keeps a history per value).
    pub const CONNECTION_DEVICE_ID: &str = "ConnectionDeviceId";
    /// The message's correlation id (the leaf's, else the router's).
    pub const CORRELATION_ID: &str = "CorrelationId";
    /// When the leaf created the message.
    pub const CREATION_TIME: &str = "CreationTimeUtc";
    /// When edgeHub took the message.
    pub const ENQUEUED_TIME: &str = "EnqueuedTimeUtc";
    /// Marks a dead letter.
    pub const DEAD_LETTER: &str = "DeadLetter";
    /// Why a message is a dead letter.
    pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
    /// Set by the classifier on a message it could not score.
    pub const CLASSIFIER_ERROR: &str = "ClassifierError";
    /// Set by the classifier on its answers: the name of the model that scored them.
    pub const MODEL_NAME: &str = "ModelName";

    /// Every property the pipeline itself sets. A leaf device's message never brings them
    /// in: the router removes them on `deviceInput` before it sets its own, so no device
    /// speaks for another engine or passes for a dead letter or an answer.
    pub const SET_BY_PIPELINE: [&str; 8] = [
        CONNECTION_DEVICE_ID,
        CORRELATION_ID,
        CREATION_TIME,
        ENQUEUED_TIME,
        DEAD_LETTER,
        DEAD_LETTER_REASON,
        CLASSIFIER_ERROR,
        MODEL_NAME,
    ];

    /// The most a leaf device's properties (system and application, as the property bag of
    /// its MQTT topic encodes them) may take for the router to forward the message. Every
    /// hop after it adds a few properties and edgeHub's stamps, and each must still fit in
    /// MQTT's 65,535-byte topic; a message over this is dead-lettered without them, so no
    /// hop has to refuse or drop it later.
    pub const MAX_LEAF_PROPERTY_BAG: usize = 16 * 1024;
}

/// Where a module output's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sink {
    /// A module's input: (module, input).
    Module(&'static str, &'static str),
    /// IoT Hub (`$upstream`).
    Upstream,
}

/// The pipeline's modules, in the order data passes them.
pub const MODULES: &[&str] = &[router::MODULE, classifier::MODULE, writer::MODULE];

/// The input leaf devices' messages go to: (module, input).
pub const LEAF_INPUT: (&str, &str) = (router::MODULE, router::DEVICE_INPUT);

/// Every module output the pipeline uses and where it goes: ((module, output), sink).
pub const EDGES: &[((&str, &str), Sink)] = &[
    (
        (router::MODULE, router::CLASS_OUTPUT),
        Sink::Module(classifier::MODULE, classifier::AML_INPUT),
    ),
    (
        (classifier::MODULE, classifier::AML_OUTPUT),
        Sink::Module(router::MODULE, router::RUL_INPUT),
    ),
    ((router::MODULE, router::HUB_OUTPUT), Sink::Upstream),
    (
        (router::MODULE, router::AVRO_OUTPUT),
        Sink::Module(writer::MODULE, writer::INPUT),
    ),
    ((router::MODULE, router::DEAD_OUTPUT), Sink::Upstream),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_is_fed_and_every_output_goes_somewhere() {
        let inputs = [
            (router::MODULE, router::DEVICE_INPUT),
            (router::MODULE, router::RUL_INPUT),
            (classifier::MODULE, classifier::AML_INPUT),
            (writer::MODULE, writer::INPUT),
        ];
        for (m, i) in inputs {
            let fed = LEAF_INPUT == (m, i) || EDGES.iter().any(|(_, s)| *s == Sink::Module(m, i));
            assert!(fed, "{m}/{i} is fed by no edge");
        }
        let outputs = [
            router::CLASS_OUTPUT,
            router::HUB_OUTPUT,
            router::AVRO_OUTPUT,
            router::DEAD_OUTPUT,
        ];
        for o in outputs {
            assert!(EDGES
                .iter()
                .any(|((m, out), _)| *m == router::MODULE && *out == o));
        }
    }
}
