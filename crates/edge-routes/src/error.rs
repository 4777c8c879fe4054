//! The error returned when a route or condition does not parse.

/// A syntax error in a route statement or a condition, with its position.
///
/// `offset` is a byte offset into the parsed text; `line` and `column` are
/// 1-based, and `column` counts characters (not bytes) from the start of the
/// line. `message` says what the parser expected and what it found instead.
///
/// It displays as `line 1, column 27: expected ... , found 'INTO'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// Byte offset into the parsed text where the problem was found.
    pub offset: usize,
    /// 1-based line number of `offset`.
    pub line: usize,
    /// 1-based column (in characters) of `offset` within its line.
    pub column: usize,
    /// What was expected and what was found instead.
    pub message: String,
}

impl ParseError {
    /// Builds an error at `offset` of `src`, working out its line and column.
    pub(crate) fn new(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(src.len());
        // Never split a UTF-8 sequence: move back to a character boundary.
        let mut at = offset;
        while !src.is_char_boundary(at) {
            at -= 1;
        }
        let before = &src[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ParseError {
            offset: at,
            line,
            column,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ParseError;

    #[test]
    fn line_and_column_are_one_based() {
        let e = ParseError::new("abc", 0, "m");
        assert_eq!((e.offset, e.line, e.column), (0, 1, 1));
        let e = ParseError::new("abc", 2, "m");
        assert_eq!((e.line, e.column), (1, 3));
    }

    #[test]
    fn line_and_column_after_newlines() {
        let src = "ab\ncd\nef";
        let e = ParseError::new(src, 7, "m");
        assert_eq!((e.line, e.column), (3, 2));
        let e = ParseError::new(src, 3, "m");
        assert_eq!((e.line, e.column), (2, 1));
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        let src = "é = x";
        let e = ParseError::new(src, "é ".len(), "m");
        assert_eq!(e.column, 3);
        assert_eq!(e.offset, 3);
    }

    #[test]
    fn offset_past_end_is_clamped() {
        let e = ParseError::new("ab", 10, "m");
        assert_eq!((e.offset, e.column), (2, 3));
    }

    #[test]
    fn display_has_position_then_message() {
        let e = ParseError::new("FROM x", 5, "expected '/', found 'x'");
        assert_eq!(e.to_string(), "line 1, column 6: expected '/', found 'x'");
    }
}
