//! IoT Hub's rules for device and module ids: a case-sensitive string of at most 128
//! characters, ASCII letters and digits plus `- : . + % _ # * ? ! ( ) , = @ ; $ '`.

/// The longest id IoT Hub accepts.
pub const MAX_ID_LEN: usize = 128;

/// The characters IoT Hub accepts in an id besides ASCII letters and digits.
pub const ID_SPECIALS: &str = "-:.+%_#*?!(),=@;$'";

/// Why an id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("an id cannot be empty")]
    Empty,
    /// Longer than [`MAX_ID_LEN`].
    #[error("'{0}…' is longer than IoT Hub's 128 characters")]
    TooLong(String),
    /// A character IoT Hub does not accept.
    #[error("'{id}' holds {ch:?}: IoT Hub takes ASCII letters, digits and {ID_SPECIALS} only")]
    Character {
        /// The id.
        id: String,
        /// The first character refused.
        ch: char,
    },
}

/// Checks `id` against IoT Hub's rules for device and module ids.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !ID_SPECIALS.contains(*c))
    {
        return Err(IdError::Character {
            id: id.escape_debug().to_string(),
            ch,
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id[..32].to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_iot_hubs_rules() {
        for ok in [
            "Client_001",
            "edge-device",
            "a:b.c+d%e#f*g?h!(i),j=k@l;m$n'o",
            "..",
        ] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert!(matches!(
            check_id(&"x".repeat(129)),
            Err(IdError::TooLong(_))
        ));
        assert_eq!(check_id(&"x".repeat(128)), Ok(()));
        for (bad, ch) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("a\nb", '\n'),
            ("é", 'é'),
            ("a\\b", '\\'),
        ] {
            assert!(
                matches!(check_id(bad), Err(IdError::Character { ch: c, .. }) if c == ch),
                "{bad:?}"
            );
        }
    }
}
