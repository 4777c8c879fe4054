//! The property bag: `key=value` pairs joined by `&`, each part percent-encoded, carried as
//! the last segment of an MQTT topic (e.g. `…/messages/events/$.cid=42&$.ct=application%2Fjson&Kind=x`).
//!
//! Keys starting with `$.` are system properties; the rest are application properties.

use crate::message::Message;
use compact_str::CompactString;

/// Key under which the hub carries the time it accepted a message.
pub const ENQUEUED_TIME_KEY: &str = "iothub-enqueuedtime";

/// Which system properties a bag should carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A client sending telemetry or an output: sender-set properties and `$.on`.
    ToHub,
    /// The hub delivering to a module input or a device: also `$.cdid`, `$.cmid` and the
    /// enqueued time.
    FromHub,
}

/// Whether `b` is an RFC 3986 unreserved character (never encoded), by table.
fn unreserved(b: u8) -> bool {
    CLASSES[usize::from(b)] == Class::Plain
}

/// Appends `s` percent-encoded (UTF-8 bytes outside the unreserved set as `%XX`).
fn push_encoded(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        if !unreserved(b) {
            // `plain..i` holds only ASCII, so both ends are character boundaries.
            if i > plain {
                out.push_str(&s[plain..i]);
            }
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
            plain = i + 1;
        }
    }
    out.push_str(&s[plain..]);
}

/// Appends `key=value` to a bag that starts at byte `start` of `out`. System keys (`$.…`)
/// are written as they are; application keys and all values are percent-encoded.
fn push_pair(out: &mut String, start: usize, key: &str, value: &str) {
    if out.len() > start {
        out.push('&');
    }
    if key.starts_with("$.") || key == ENQUEUED_TIME_KEY {
        out.push_str(key);
    } else {
        push_encoded(out, key);
    }
    out.push('=');
    push_encoded(out, value);
}

/// Encodes the message's properties as a property bag, system properties first.
pub fn encode(message: &Message, direction: Direction) -> String {
    let mut out = String::with_capacity(64 + message.properties.len() * 24);
    encode_into(&mut out, message, direction);
    out
}

/// Like [`encode`], appending the bag to `out` (typically a topic prefix).
pub fn encode_into(out: &mut String, message: &Message, direction: Direction) {
    let start = out.len();
    let system: [(&str, &Option<CompactString>); 9] = [
        ("$.mid", &message.message_id),
        ("$.cid", &message.correlation_id),
        ("$.uid", &message.user_id),
        ("$.to", &message.to),
        ("$.ct", &message.content_type),
        ("$.ce", &message.content_encoding),
        ("$.exp", &message.expiry),
        ("$.ctime", &message.creation_time),
        ("$.on", &message.output_name),
    ];
    for (key, value) in system {
        if let Some(v) = value {
            push_pair(out, start, key, v);
        }
    }
    if direction == Direction::FromHub {
        let stamps = [
            ("$.cdid", &message.connection_device_id),
            ("$.cmid", &message.connection_module_id),
            (ENQUEUED_TIME_KEY, &message.enqueued_time),
        ];
        for (key, value) in stamps {
            if let Some(v) = value {
                push_pair(out, start, key, v);
            }
        }
    }
    for (k, v) in &message.properties {
        push_pair(out, start, k, v);
    }
}

/// A key or value as it is, or percent-decoded if it holds a `%`. A `%` not followed by two
/// hex digits stays as it is; bytes that do not decode to UTF-8 become U+FFFD.
///
/// Parts are short (ids, `application%2Fjson`, times): a result of up to 24 bytes is kept
/// inline by [`CompactString`], and one that needs decoding is decoded on the stack first,
/// so the common part costs no allocation.
fn decode_part(s: &str) -> CompactString {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|b| *b == b'%') else {
        return CompactString::from(s);
    };
    let mut stack = [0u8; 64];
    let mut heap = Vec::new();
    // Decoding only shortens, so the input's length is room enough.
    let on_heap = bytes.len() > stack.len();
    let out: &mut [u8] = if !on_heap {
        &mut stack[..bytes.len()]
    } else {
        heap.resize(bytes.len(), 0);
        &mut heap
    };
    out[..first].copy_from_slice(&bytes[..first]);
    let (mut i, mut n) = (first, first);
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out[n] = hi << 4 | lo;
                n += 1;
                i += 3;
                continue;
            }
        }
        // A run of plain bytes (or a `%` that starts no escape), copied whole.
        let run = bytes[i + 1..]
            .iter()
            .position(|b| *b == b'%')
            .map_or(bytes.len(), |k| i + 1 + k);
        out[n..n + run - i].copy_from_slice(&bytes[i..run]);
        n += run - i;
        i = run;
    }
    if on_heap {
        // Long: the decoded bytes become the string's buffer (no second allocation).
        heap.truncate(n);
        return match String::from_utf8(heap) {
            Ok(text) => CompactString::from(text),
            Err(e) => CompactString::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        };
    }
    match std::str::from_utf8(&out[..n]) {
        Ok(text) => CompactString::from(text),
        Err(_) => CompactString::from(String::from_utf8_lossy(&out[..n])),
    }
}

/// The value of an ASCII hex digit.
fn hex(b: Option<&u8>) -> Option<u8> {
    match b? {
        d @ b'0'..=b'9' => Some(d - b'0'),
        d @ b'a'..=b'f' => Some(d - b'a' + 10),
        d @ b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// Decodes a property bag into `message`, filling system fields and appending application
/// properties. Empty parts are skipped; a part without `=` is a property with an empty value.
pub fn decode_into(bag: &str, message: &mut Message) {
    // `&` and `=` are ASCII, so every position found below is a character boundary. A byte
    // scan beats `str::split` on parts this short.
    let bytes = bag.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        // One pass over the part: where it ends, and where its key ends.
        let mut eq = None;
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'&' => break,
                b'=' if eq.is_none() => eq = Some(end),
                _ => {}
            }
            end += 1;
        }
        let (k, v) = match eq {
            Some(i) => (&bag[start..i], &bag[i + 1..end]),
            None => (&bag[start..end], ""),
        };
        start = end + 1;
        if eq.is_none() && k.is_empty() {
            continue; // an empty part
        }
        // Keys are matched as they are unless escaped (system keys never are).
        let decoded;
        let key: &str = if k.as_bytes().contains(&b'%') {
            decoded = decode_part(k);
            &decoded
        } else {
            k
        };
        let slot = match key {
            "$.mid" => &mut message.message_id,
            "$.cid" => &mut message.correlation_id,
            "$.uid" => &mut message.user_id,
            "$.to" => &mut message.to,
            "$.ct" => &mut message.content_type,
            "$.ce" => &mut message.content_encoding,
            "$.exp" => &mut message.expiry,
            "$.ctime" => &mut message.creation_time,
            "$.on" => &mut message.output_name,
            "$.cdid" => &mut message.connection_device_id,
            "$.cmid" => &mut message.connection_module_id,
            ENQUEUED_TIME_KEY => &mut message.enqueued_time,
            _ if key.starts_with("$.") => continue, // other system keys ($.ifid, …) are not kept
            _ => {
                let value = decode_part(v);
                message.properties.push((CompactString::from(key), value));
                continue;
            }
        };
        *slot = Some(decode_part(v));
    }
}

/// Decodes a property bag into a fresh message with an empty body.
pub fn decode(bag: &str) -> Message {
    let mut m = Message::default();
    decode_into(bag, &mut m);
    m
}

/// The properties the hub stamps on a message it takes from a client.
#[derive(Debug, Clone, Copy)]
pub struct Stamps<'a> {
    /// `$.cdid`: the sender's device.
    pub connection_device_id: &'a str,
    /// `$.cmid`: the sender's module, if a module sent it.
    pub connection_module_id: Option<&'a str>,
    /// `iothub-enqueuedtime`.
    pub enqueued_time: &'a str,
}

/// A client's bag made into the bag the hub delivers, by [`restamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restamped {
    /// The bag, with the hub's stamps.
    pub bag: String,
    /// `$.on`: the output the message was sent to, if any (routes match on it).
    pub output_name: Option<CompactString>,
}

/// System keys that [`decode_into`] keeps from a client's bag; other `$.` keys, and the
/// hub's own stamps, are not taken from clients.
const SENDER_SYSTEM_KEYS: [&str; 9] = [
    "$.mid", "$.cid", "$.uid", "$.to", "$.ct", "$.ce", "$.exp", "$.ctime", "$.on",
];

/// How [`restamp`] treats a byte of a bag: kept as it is, or ending a part or a key, or
/// one that must be encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Unreserved: copied as it is.
    Plain,
    /// `%`: copied as it is when it escapes an ASCII byte, encoded again otherwise (a key
    /// with one is decoded to be compared).
    Percent,
    /// `&`: ends a part.
    Amp,
    /// `=`: the first one ends the key.
    Eq,
    /// Anything else: the part is encoded again.
    Other,
}

/// [`Class`] of every byte value.
const CLASSES: [Class; 256] = {
    let mut t = [Class::Other; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        // RFC 3986 unreserved characters.
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            t[b] = Class::Plain;
        }
        b += 1;
    }
    t[b'%' as usize] = Class::Percent;
    t[b'&' as usize] = Class::Amp;
    t[b'=' as usize] = Class::Eq;
    t
};

/// The bag the hub delivers for a message a client sent with `bag`, without decoding and
/// re-encoding every property: the client's parts are copied as they are (a part with
/// characters that need encoding is encoded again), except hub stamps and system keys
/// that [`decode_into`] drops, and then `stamps` are appended. The result decodes to the
/// same properties as [`encode`]`(…, Direction::FromHub)` of the decoded and stamped
/// message.
pub fn restamp(bag: &str, stamps: &Stamps<'_>) -> Restamped {
    let mut out = String::with_capacity(bag.len() + 96);
    let mut output_name = None;
    let bytes = bag.as_bytes();
    // Parts are copied in runs: `run..run_end` (whole parts joined by `&`) is copied as it
    // is once a part breaks the run (an empty part, one left out or one encoded again).
    let (mut run, mut run_end) = (0, 0);
    let flush = |out: &mut String, from: usize, to: usize| {
        if to > from {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&bag[from..to]);
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        // One pass over the part, by byte class: where the key ends, whether the key has
        // escapes, whether the part may be copied as it is. A part is copied only if it is
        // what `push_pair` would write for it too, as other clients' parsers expect: one
        // `=`, unreserved characters, and escapes of ASCII bytes (`%2F`, not `%zz`, `50%`
        // or the `%FF` of a broken UTF-8 sequence). A system key's `$.` is its own.
        let start = i;
        if bytes[i..].starts_with(b"$.") {
            i += 2;
        }
        let (mut eq, mut escaped_key, mut plain) = (None, false, true);
        while i < bytes.len() {
            match CLASSES[usize::from(bytes[i])] {
                Class::Plain => {}
                Class::Percent => {
                    escaped_key |= eq.is_none();
                    let ascii_escape = matches!(bytes.get(i + 1), Some(b'0'..=b'7'))
                        && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                    plain &= ascii_escape;
                }
                Class::Amp => break,
                Class::Eq if eq.is_none() => eq = Some(i),
                Class::Eq | Class::Other => plain = false,
            }
            i += 1;
        }
        let end = i;
        i += 1;
        if start == end {
            // An empty part: skipped, like `decode_into` does.
            flush(&mut out, run, run_end);
            run = i;
            continue;
        }
        let (k, v) = match eq {
            Some(e) => (&bag[start..e], &bag[e + 1..end]),
            // A part without `=` is a key with an empty value: written as `key=`.
            None => {
                plain = false;
                (&bag[start..end], "")
            }
        };
        // Keys are compared decoded, as `decode_into` does (`%24.cdid` is `$.cdid`).
        let decoded;
        let key = if escaped_key {
            decoded = decode_part(k);
            decoded.as_str()
        } else {
            k
        };
        let keep = if key.starts_with("$.") {
            let kept = SENDER_SYSTEM_KEYS.contains(&key);
            if key == "$.on" {
                output_name = Some(decode_part(v));
            }
            kept
        } else {
            key != ENQUEUED_TIME_KEY
        };
        if keep && plain {
            run_end = end;
            continue;
        }
        flush(&mut out, run, run_end);
        run = i;
        if keep {
            push_pair(&mut out, 0, key, &decode_part(v));
        }
    }
    flush(&mut out, run, run_end);
    push_pair(&mut out, 0, "$.cdid", stamps.connection_device_id);
    if let Some(module) = stamps.connection_module_id {
        push_pair(&mut out, 0, "$.cmid", module);
    }
    push_pair(&mut out, 0, ENQUEUED_TIME_KEY, stamps.enqueued_time);
    Restamped {
        bag: out,
        output_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::json("{}");
        m.message_id = Some("m-1".into());
        m.correlation_id = Some("c/1 &=?".into());
        m.output_name = Some("classOutput".into());
        m.properties = vec![
            ("CorrelationId".into(), "c/1 &=?".into()),
            ("weird key=&".into(), "välue%20".into()),
            ("empty".into(), "".into()),
        ];
        m
    }

    #[test]
    fn round_trips_every_field_and_special_characters() {
        let m = sample();
        let bag = encode(&m, Direction::ToHub);
        assert!(
            bag.starts_with("$.mid=m-1&$.cid=c%2F1%20%26%3D%3F&"),
            "{bag}"
        );
        assert!(bag.contains("$.ct=application%2Fjson"));
        let back = decode(&bag);
        assert_eq!(
            back,
            Message {
                body: back.body.clone(),
                ..m
            }
        );
    }

    #[test]
    fn hub_stamps_only_travel_from_the_hub() {
        let mut m = sample();
        m.connection_device_id = Some("edge".into());
        m.connection_module_id = Some("router".into());
        m.enqueued_time = Some("2026-11-21T05:00:00Z".into());
        let to_hub = decode(&encode(&m, Direction::ToHub));
        assert_eq!(to_hub.connection_device_id, None);
        assert_eq!(to_hub.enqueued_time, None);
        let from_hub = decode(&encode(&m, Direction::FromHub));
        assert_eq!(from_hub.connection_device_id.as_deref(), Some("edge"));
        assert_eq!(from_hub.connection_module_id.as_deref(), Some("router"));
        assert_eq!(
            from_hub.enqueued_time.as_deref(),
            Some("2026-11-21T05:00:00Z")
        );
        assert_eq!(from_hub.properties, m.properties);
    }

    #[test]
    fn encodes_every_byte_outside_the_unreserved_set() {
        let mut out = String::new();
        push_encoded(&mut out, "a-b.c_d~e f:ü€/é%");
        assert_eq!(out, "a-b.c_d~e%20f%3A%C3%BC%E2%82%AC%2F%C3%A9%25");
        for s in ["", "ü", "üü", "xü", "üx", "2026-11-21T08:00:00.000Z"] {
            let mut out = String::new();
            push_encoded(&mut out, s);
            assert_eq!(decode_part(&out), s);
        }
    }

    #[test]
    fn tolerates_odd_bags() {
        let m = decode("&&a=1&b&$.ifid=x&c=%zz");
        assert_eq!(
            m.properties,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "%zz".into())
            ]
        );
        // `=` inside a value, unencoded multi-byte text, a trailing `&`, a lone `=`.
        let m = decode("k=a=b&ü=ö&$.cid=x%26y&=&");
        assert_eq!(m.correlation_id.as_deref(), Some("x&y"));
        assert_eq!(
            m.properties,
            vec![
                ("k".into(), "a=b".into()),
                ("ü".into(), "ö".into()),
                ("".into(), "".into())
            ]
        );
        // Escaped keys are decoded before they are matched: `%24.cid` is `$.cid`.
        let m = decode("%24.cid=c&%24.ifid=x&A%20b=1&%24x=2");
        assert_eq!(m.correlation_id.as_deref(), Some("c"));
        assert_eq!(
            m.properties,
            vec![("A b".into(), "1".into()), ("$x".into(), "2".into())]
        );
    }

    #[test]
    fn decodes_escapes_like_percent_decoding_does() {
        let cases = [
            ("plain", "plain"),
            ("a%2Fb", "a/b"),
            ("%2f%2F", "//"),
            ("%", "%"),
            ("50%", "50%"),
            ("%4", "%4"),
            ("%zz%41", "%zzA"),
            ("%%41", "%A"),
            ("%C3%BC-%E2%82%AC", "ü-€"),
            ("ü%20ö", "ü ö"),
            ("%FF%41", "\u{FFFD}A"),
            ("%C3", "\u{FFFD}"),
        ];
        for (encoded, text) in cases {
            assert_eq!(decode_part(encoded), text, "{encoded}");
            assert_eq!(
                decode_part(encoded),
                &*percent_encoding::percent_decode_str(encoded).decode_utf8_lossy(),
                "{encoded}"
            );
        }
        // Short parts, escaped or not, are kept inline; long ones decode whole.
        assert!(!decode_part("no-escape").is_heap_allocated());
        assert!(!decode_part("application%2Fjson").is_heap_allocated());
        let long = "%41".repeat(40);
        assert_eq!(decode_part(&long), "A".repeat(40));
        // Either side of the stack buffer's 64 bytes, escapes and bad UTF-8 included.
        for len in [63, 64, 65, 66] {
            for tail in ["%41", "%C3%BC", "%FF", "%", "%4"] {
                let part = format!("{}{tail}", "x".repeat(len - tail.len()));
                assert_eq!(
                    decode_part(&part),
                    &*percent_encoding::percent_decode_str(&part).decode_utf8_lossy(),
                    "{part}"
                );
            }
        }
    }

    const STAMPS: Stamps<'static> = Stamps {
        connection_device_id: "edge-1",
        connection_module_id: Some("router"),
        enqueued_time: "2026-11-21T05:00:00.000Z",
    };

    /// What the hub delivered before `restamp`: the bag decoded, stamped and encoded again.
    fn decoded_stamped_encoded(bag: &str, stamps: &Stamps<'_>) -> Message {
        let mut m = decode(bag);
        m.connection_device_id = Some(stamps.connection_device_id.into());
        m.connection_module_id = stamps.connection_module_id.map(Into::into);
        m.enqueued_time = Some(stamps.enqueued_time.into());
        decode(&encode(&m, Direction::FromHub))
    }

    #[test]
    fn restamp_keeps_the_senders_parts_and_adds_the_hubs_stamps() {
        let bag = encode(&sample(), Direction::ToHub);
        let r = restamp(&bag, &STAMPS);
        // The sender's parts, as sent, then the stamps.
        assert_eq!(
            r.bag,
            format!("{bag}&$.cdid=edge-1&$.cmid=router&iothub-enqueuedtime=2026-11-21T05%3A00%3A00.000Z")
        );
        assert_eq!(r.output_name.as_deref(), Some("classOutput"));
        assert_eq!(decode(&r.bag), decoded_stamped_encoded(&bag, &STAMPS));
    }

    #[test]
    fn restamp_drops_stamps_a_sender_sets_and_system_keys_the_hub_does_not_keep() {
        let device = Stamps {
            connection_module_id: None,
            ..STAMPS
        };
        let bag = "$.cdid=spoof&%24.cmid=spoof&iothub-enqueuedtime=1999&$.ifid=x&a=1&$.on=o%2F1";
        let r = restamp(bag, &device);
        assert_eq!(
            r.bag,
            "a=1&$.on=o%2F1&$.cdid=edge-1&iothub-enqueuedtime=2026-11-21T05%3A00%3A00.000Z"
        );
        assert_eq!(r.output_name.as_deref(), Some("o/1"));
        let m = decode(&r.bag);
        assert_eq!(m.connection_device_id.as_deref(), Some("edge-1"));
        assert_eq!(m.connection_module_id, None);
        assert_eq!(m, decoded_stamped_encoded(bag, &device));
    }

    #[test]
    fn restamp_re_encodes_parts_that_are_not_safe_to_copy() {
        // A second `=`, unencoded text, a raw `/`, stray or non-ASCII escapes and a part
        // without `=` are written as `push_pair` writes them; the rest is copied.
        let r = restamp(
            "k=a=b&ü=ö/x&bad=%zz&pct=50%&hi=%FF&flag&ok=%2f&$.ct&&last=1&",
            &STAMPS,
        );
        assert!(
            r.bag.starts_with(
                "k=a%3Db&%C3%BC=%C3%B6%2Fx&bad=%25zz&pct=50%25&hi=%EF%BF%BD&flag=&ok=%2f&$.ct=&last=1&$.cdid=edge-1"
            ),
            "{}",
            r.bag
        );
        assert!(well_formed(&r.bag), "{}", r.bag);
        assert_eq!(r.output_name, None);
    }

    /// Whether `bag` is as `push_pair` writes bags, which other clients' parsers expect:
    /// no empty part, one `=` per part, only unreserved characters and well-formed escapes
    /// (apart from a system key's `$.`) that decode to UTF-8.
    fn well_formed(bag: &str) -> bool {
        bag.split('&').all(|part| {
            let body = part.strip_prefix("$.").unwrap_or(part);
            let b = body.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'%' => {
                        let escape = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                        if !escape {
                            return false;
                        }
                        i += 3;
                        continue;
                    }
                    c if !unreserved(c) && c != b'=' => return false,
                    _ => {}
                }
                i += 1;
            }
            let utf8 = part.split('=').all(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .is_ok()
            });
            !part.is_empty() && part.matches('=').count() == 1 && utf8
        })
    }

    proptest::proptest! {
        #[test]
        fn restamp_decodes_like_decoding_stamping_and_encoding(
            parts in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "$.mid", "$.cid", "$.uid", "$.to", "$.ct", "$.ce", "$.exp", "$.ctime",
                        "$.on", "$.cdid", "$.cmid", "iothub-enqueuedtime", "$.ifid", "%24.cid",
                        "%24.cdid", "%24.on", "a", "A%20b", "ü", "", "k=", "$x", "%", "%FF",
                    ]),
                    proptest::option::of("[a-z%/=ü 0-9A-F.$&+-]{0,12}"),
                ),
                0..8,
            ),
            device in proptest::bool::ANY,
        ) {
            let bag = parts
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => (*k).to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            let stamps = Stamps {
                connection_module_id: if device { None } else { Some("router") },
                ..STAMPS
            };
            let r = restamp(&bag, &stamps);
            proptest::prop_assert!(well_formed(&r.bag), "{} from {}", r.bag, bag);
            proptest::prop_assert_eq!(decode(&r.bag), decoded_stamped_encoded(&bag, &stamps));
            proptest::prop_assert_eq!(r.output_name, decode(&bag).output_name);
        }
    }

    #[test]
    fn encode_into_appends_after_existing_text() {
        let mut s = String::from("devices/d/messages/events/");
        let mut m = Message::new("x");
        m.properties.push(("k".into(), "v".into()));
        encode_into(&mut s, &m, Direction::ToHub);
        assert_eq!(s, "devices/d/messages/events/k=v");
    }
}
