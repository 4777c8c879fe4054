//! Turns route and condition text into tokens, on demand.
//!
//! The parser pulls one token at a time, and for the two places where the
//! token rules differ (the source path after `FROM`, and the path after
//! `$body` / `$twin`) it calls dedicated methods that read raw characters.

use crate::ast::{is_name_char, PathSegment};
use crate::error::ParseError;

/// The kinds of token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// A bare word: keyword, application property or function name.
    Ident,
    /// `$name`; the name is the token text without its first byte.
    Dollar,
    /// A number literal, already converted.
    Number(f64),
    /// A string literal with escapes resolved.
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    Coalesce,
    Eof,
}

/// A token and the byte range of its text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

/// Describes what is at byte `pos` of `src` for an error message.
pub(crate) fn describe_char_at(src: &str, pos: usize) -> String {
    match src.get(pos..).and_then(|rest| rest.chars().next()) {
        None => "end of input".to_string(),
        Some(c) if c.is_whitespace() => format!("whitespace {c:?}"),
        Some(c) => format!("'{c}'"),
    }
}

/// A lexer over one piece of text.
pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str) -> Self {
        Lexer { src, pos: 0 }
    }

    pub fn src(&self) -> &'s str {
        self.src
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, offset, message)
    }

    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_byte_at(&self, pos: usize) -> Option<u8> {
        self.src.as_bytes().get(pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while let Some(c) = self.peek_char() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    /// Skips whitespace and `/* ... */` comments.
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_whitespace();
            if self.src[self.pos..].starts_with("/*") {
                let start = self.pos;
                match self.src[self.pos + 2..].find("*/") {
                    Some(i) => self.pos += 2 + i + 2,
                    None => {
                        return Err(self.error(
                            start,
                            "unterminated comment: expected '*/' before end of input",
                        ))
                    }
                }
            } else {
                return Ok(());
            }
        }
    }

    /// Reads the next token.
    pub fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia()?;
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: TokenKind::Eof,
                start,
                end: start,
            });
        };
        let kind = match c {
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            '{' => TokenKind::LBrace,
            '}' => TokenKind::RBrace,
            ',' => TokenKind::Comma,
            '*' => TokenKind::Star,
            '+' => TokenKind::Plus,
            '-' => TokenKind::Minus,
            '/' => TokenKind::Slash,
            '%' => TokenKind::Percent,
            '=' => TokenKind::Eq,
            '!' => {
                self.expect_char('=', "'=' after '!'")?;
                TokenKind::Ne
            }
            '<' => match self.peek_char() {
                Some('=') => {
                    self.pos += 1;
                    TokenKind::Le
                }
                Some('>') => {
                    self.pos += 1;
                    TokenKind::Ne
                }
                _ => TokenKind::Lt,
            },
            '>' => {
                if self.peek_char() == Some('=') {
                    self.pos += 1;
                    TokenKind::Ge
                } else {
                    TokenKind::Gt
                }
            }
            '|' => {
                self.expect_char('|', "'|' after '|' (the '||' operator)")?;
                TokenKind::Concat
            }
            '?' => {
                self.expect_char('?', "'?' after '?' (the '??' operator)")?;
                TokenKind::Coalesce
            }
            '\'' | '"' => TokenKind::Str(self.lex_string_body(start, c)?),
            '$' => {
                let name_start = self.pos;
                self.eat_name_chars();
                if self.pos == name_start {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "expected a property name after '$', found {}",
                            describe_char_at(self.src, self.pos)
                        ),
                    ));
                }
                TokenKind::Dollar
            }
            '0'..='9' => self.lex_number(start)?,
            '.' if matches!(self.peek_byte_at(self.pos), Some(b'0'..=b'9')) => {
                self.lex_number(start)?
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while matches!(self.peek_char(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                TokenKind::Ident
            }
            _ => {
                return Err(self.error(
                    start,
                    format!(
                        "expected an operand, operator or keyword, found unexpected character {}",
                        describe_char_at(self.src, start)
                    ),
                ))
            }
        };
        Ok(Token {
            kind,
            start,
            end: self.pos,
        })
    }

    fn expect_char(&mut self, want: char, what: &str) -> Result<(), ParseError> {
        if self.peek_char() == Some(want) {
            self.pos += want.len_utf8();
            Ok(())
        } else {
            Err(self.error(
                self.pos,
                format!(
                    "expected {what}, found {}",
                    describe_char_at(self.src, self.pos)
                ),
            ))
        }
    }

    fn eat_name_chars(&mut self) {
        while matches!(self.peek_char(), Some(c) if is_name_char(c)) {
            self.pos += 1;
        }
    }

    fn eat_digits(&mut self) -> usize {
        let from = self.pos;
        while matches!(self.peek_byte_at(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - from
    }

    /// Lexes a number whose first character (a digit or '.') is at `start`;
    /// `self.pos` is just past that character.
    fn lex_number(&mut self, start: usize) -> Result<TokenKind, ParseError> {
        self.pos = start;
        let value = if self.src[start..].starts_with("0x") || self.src[start..].starts_with("0X") {
            self.pos += 2;
            let digits_start = self.pos;
            while matches!(self.peek_char(), Some(c) if c.is_ascii_hexdigit()) {
                self.pos += 1;
            }
            if self.pos == digits_start {
                return Err(self.error(
                    self.pos,
                    format!(
                        "expected a hexadecimal digit after '0x', found {}",
                        describe_char_at(self.src, self.pos)
                    ),
                ));
            }
            let digits = &self.src[digits_start..self.pos];
            u64::from_str_radix(digits, 16).map_err(|_| {
                self.error(
                    start,
                    format!("expected a hexadecimal number below 2^64, found '0x{digits}'"),
                )
            })? as f64
        } else {
            self.eat_digits();
            if self.peek_byte_at(self.pos) == Some(b'.') {
                self.pos += 1;
                if self.eat_digits() == 0 {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "expected a digit after the decimal point, found {}",
                            describe_char_at(self.src, self.pos)
                        ),
                    ));
                }
            }
            if matches!(self.peek_byte_at(self.pos), Some(b'e' | b'E')) {
                self.pos += 1;
                if matches!(self.peek_byte_at(self.pos), Some(b'+' | b'-')) {
                    self.pos += 1;
                }
                if self.eat_digits() == 0 {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "expected a digit in the exponent, found {}",
                            describe_char_at(self.src, self.pos)
                        ),
                    ));
                }
            }
            let text = &self.src[start..self.pos];
            let value: f64 = text
                .parse()
                .map_err(|_| self.error(start, format!("expected a number, found '{text}'")))?;
            if !value.is_finite() {
                return Err(self.error(
                    start,
                    format!("expected a number within the range of a 64-bit float, found '{text}'"),
                ));
            }
            value
        };
        if matches!(self.peek_char(), Some(c) if c.is_alphanumeric() || c == '_' || c == '.') {
            return Err(self.error(
                self.pos,
                format!(
                    "expected an operator or delimiter after number '{}', found {}",
                    &self.src[start..self.pos],
                    describe_char_at(self.src, self.pos)
                ),
            ));
        }
        Ok(TokenKind::Number(value))
    }

    /// Lexes the rest of a string literal whose opening `quote` is at `start`.
    ///
    /// Escapes: `\\`, `\'`, `\"`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX`
    /// (surrogate pairs combined), and a doubled quote character.
    fn lex_string_body(&mut self, start: usize, quote: char) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.bump() else {
                return Err(self.error(
                    start,
                    format!("unterminated string: expected closing {quote} before end of input"),
                ));
            };
            if c == quote {
                if self.peek_char() == Some(quote) {
                    self.pos += quote.len_utf8();
                    out.push(quote);
                    continue;
                }
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escaped = match self.bump() {
                Some('\\') => '\\',
                Some('\'') => '\'',
                Some('"') => '"',
                Some('/') => '/',
                Some('b') => '\u{8}',
                Some('f') => '\u{c}',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some('u') => self.lex_unicode_escape(at)?,
                _ => {
                    return Err(self.error(
                        at,
                        format!(
                            "expected an escape (\\\\, \\', \\\", \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX) after '\\', found {}",
                            describe_char_at(self.src, at + 1)
                        ),
                    ))
                }
            };
            out.push(escaped);
        }
    }

    /// Reads the four hex digits of a `\u` escape starting at `at` (the backslash),
    /// plus a second `\uXXXX` when the first is a high surrogate.
    fn lex_unicode_escape(&mut self, at: usize) -> Result<char, ParseError> {
        let first = self.hex4(at)?;
        let code = if (0xD800..0xDC00).contains(&first) {
            let second_at = self.pos;
            if !self.src[self.pos..].starts_with("\\u") {
                return Err(self.error(
                    second_at,
                    format!(
                        "expected a low surrogate '\\uDC00'..'\\uDFFF' after high surrogate, found {}",
                        describe_char_at(self.src, second_at)
                    ),
                ));
            }
            self.pos += 2;
            let second = self.hex4(second_at)?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(self.error(
                    second_at,
                    format!(
                        "expected a low surrogate '\\uDC00'..'\\uDFFF', found '\\u{second:04X}'"
                    ),
                ));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| {
            self.error(
                at,
                format!("expected a Unicode scalar value, found lone surrogate '\\u{code:04X}'"),
            )
        })
    }

    fn hex4(&mut self, at: usize) -> Result<u32, ParseError> {
        let digits = self.src.get(self.pos..self.pos + 4).unwrap_or("");
        if digits.len() == 4 && digits.chars().all(|c| c.is_ascii_hexdigit()) {
            self.pos += 4;
            Ok(u32::from_str_radix(digits, 16).expect("four hex digits"))
        } else {
            Err(self.error(
                at,
                format!(
                    "expected four hexadecimal digits after '\\u', found {}",
                    describe_char_at(self.src, self.pos)
                ),
            ))
        }
    }

    /// Reads the source path after `FROM`: whitespace, then a run of
    /// non-whitespace characters that must form `/segment(/segment)*`, where
    /// `*` may appear only as the final character.
    pub fn lex_source_path(&mut self) -> Result<String, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        if self.peek_char() != Some('/') {
            return Err(self.error(
                start,
                format!(
                    "expected a source path starting with '/' after FROM, found {}",
                    describe_char_at(self.src, start)
                ),
            ));
        }
        while let Some(c) = self.peek_char() {
            if c.is_whitespace() {
                break;
            }
            if matches!(
                c,
                '(' | ')'
                    | '<'
                    | '>'
                    | '@'
                    | ','
                    | ';'
                    | ':'
                    | '\\'
                    | '"'
                    | '\''
                    | '?'
                    | '='
                    | '{'
                    | '}'
                    | '['
                    | ']'
            ) {
                return Err(self.error(
                    self.pos,
                    format!("expected a source path character or whitespace, found '{c}'"),
                ));
            }
            if c == '/'
                && self
                    .peek_byte_at(self.pos + 1)
                    .is_none_or(|b| b == b'/' || (b as char).is_ascii_whitespace())
            {
                return Err(self.error(
                    self.pos + 1,
                    format!(
                        "expected a path segment after '/', found {}",
                        describe_char_at(self.src, self.pos + 1)
                    ),
                ));
            }
            if c == '*' {
                let next = self.pos + 1;
                if self.src[next..]
                    .chars()
                    .next()
                    .is_some_and(|n| !n.is_whitespace())
                {
                    return Err(self.error(
                        next,
                        format!(
                            "expected whitespace after '*', which may only end a source path, found {}",
                            describe_char_at(self.src, next)
                        ),
                    ));
                }
            }
            self.pos += c.len_utf8();
        }
        Ok(self.src[start..self.pos].to_string())
    }

    /// Reads the `.name`, `[index]` and `['key']` steps that directly follow
    /// `$body` or `$twin` (no whitespace before a step).
    pub fn lex_path_segments(&mut self) -> Result<Vec<PathSegment>, ParseError> {
        let mut path = Vec::new();
        loop {
            match self.peek_char() {
                Some('.') => {
                    self.pos += 1;
                    let start = self.pos;
                    self.eat_name_chars();
                    if self.pos == start {
                        return Err(self.error(
                            start,
                            format!(
                                "expected a property name after '.', found {}",
                                describe_char_at(self.src, start)
                            ),
                        ));
                    }
                    path.push(PathSegment::Key(self.src[start..self.pos].to_string()));
                }
                Some('[') => {
                    self.pos += 1;
                    self.skip_whitespace();
                    let start = self.pos;
                    match self.peek_char() {
                        Some('0'..='9') => {
                            self.eat_digits();
                            let digits = &self.src[start..self.pos];
                            let index = digits.parse::<usize>().map_err(|_| {
                                self.error(
                                    start,
                                    format!("expected an array index that fits in memory, found '{digits}'"),
                                )
                            })?;
                            path.push(PathSegment::Index(index));
                        }
                        Some(q @ ('\'' | '"')) => {
                            self.pos += 1;
                            let key = self.lex_string_body(start, q)?;
                            path.push(PathSegment::Key(key));
                        }
                        _ => {
                            return Err(self.error(
                                start,
                                format!(
                                    "expected an array index or a quoted key after '[', found {}",
                                    describe_char_at(self.src, start)
                                ),
                            ))
                        }
                    }
                    self.skip_whitespace();
                    self.expect_char(']', "']' to close '['")?;
                }
                _ => return Ok(path),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut lexer = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let token = lexer.next_token().expect("lexes");
            if token.kind == TokenKind::Eof {
                return out;
            }
            out.push(token.kind);
        }
    }

    fn lex_error(src: &str) -> ParseError {
        let mut lexer = Lexer::new(src);
        loop {
            match lexer.next_token() {
                Err(e) => return e,
                Ok(t) if t.kind == TokenKind::Eof => panic!("{src:?} lexed without error"),
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn operators() {
        use TokenKind::*;
        assert_eq!(
            kinds("( ) { } , * + - / % = != <> < <= > >= || ??"),
            vec![
                LParen, RParen, LBrace, RBrace, Comma, Star, Plus, Minus, Slash, Percent, Eq, Ne,
                Ne, Lt, Le, Gt, Ge, Concat, Coalesce
            ]
        );
    }

    #[test]
    fn operators_without_spaces() {
        use TokenKind::*;
        assert_eq!(kinds("a<=1"), vec![Ident, Le, Number(1.0)],);
        assert_eq!(kinds("a<>b"), vec![Ident, Ne, Ident]);
    }

    #[test]
    fn numbers() {
        use TokenKind::Number;
        assert_eq!(kinds("42"), vec![Number(42.0)]);
        assert_eq!(kinds("4.25"), vec![Number(4.25)]);
        assert_eq!(kinds(".5"), vec![Number(0.5)]);
        assert_eq!(kinds("1e3"), vec![Number(1000.0)]);
        assert_eq!(kinds("2.5E-2"), vec![Number(0.025)]);
        assert_eq!(kinds("1e+2"), vec![Number(100.0)]);
        assert_eq!(kinds("0x1F"), vec![Number(31.0)]);
        assert_eq!(kinds("0XfF"), vec![Number(255.0)]);
    }

    #[test]
    fn bad_numbers() {
        let e = lex_error("1.");
        assert!(
            e.message
                .contains("expected a digit after the decimal point"),
            "{e}"
        );
        let e = lex_error("1e");
        assert!(
            e.message.contains("expected a digit in the exponent"),
            "{e}"
        );
        let e = lex_error("12abc");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("found 'a'"), "{e}");
        let e = lex_error("0x");
        assert!(e.message.contains("hexadecimal digit"), "{e}");
        let e = lex_error("1e999");
        assert!(e.message.contains("range"), "{e}");
        assert_eq!(e.offset, 0);
    }

    #[test]
    fn strings_and_escapes() {
        use TokenKind::Str;
        assert_eq!(kinds("'abc'"), vec![Str("abc".into())]);
        assert_eq!(kinds("\"abc\""), vec![Str("abc".into())]);
        assert_eq!(kinds(r"'it\'s'"), vec![Str("it's".into())]);
        assert_eq!(kinds("'it''s'"), vec![Str("it's".into())]);
        assert_eq!(kinds(r#""say \"hi\"""#), vec![Str("say \"hi\"".into())]);
        assert_eq!(kinds(r#""a""b""#), vec![Str("a\"b".into())]);
        assert_eq!(kinds(r"'a\\b'"), vec![Str("a\\b".into())]);
        assert_eq!(
            kinds(r"'\n\t\r\/\b\f'"),
            vec![Str("\n\t\r/\u{8}\u{c}".into())]
        );
        assert_eq!(kinds(r"'\u0041\u00e9'"), vec![Str("Aé".into())]);
        assert_eq!(kinds(r"'\uD83D\uDE00'"), vec![Str("😀".into())]);
        assert_eq!(kinds("'x\"y'"), vec![Str("x\"y".into())]);
        assert_eq!(kinds("''"), vec![Str(String::new())]);
    }

    #[test]
    fn bad_strings() {
        let e = lex_error("a = 'abc");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("unterminated string"), "{e}");
        let e = lex_error(r"'a\qb'");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("found 'q'"), "{e}");
        let e = lex_error(r"'\u12'");
        assert!(e.message.contains("four hexadecimal digits"), "{e}");
        let e = lex_error(r"'\uD83Dx'");
        assert!(e.message.contains("low surrogate"), "{e}");
        let e = lex_error(r"'\uDE00'");
        assert!(e.message.contains("lone surrogate"), "{e}");
    }

    #[test]
    fn names() {
        use TokenKind::*;
        let src = "$iothub-enqueuedtime AND_x $a1";
        let mut lexer = Lexer::new(src);
        let t = lexer.next_token().unwrap();
        assert_eq!(t.kind, Dollar);
        assert_eq!(&src[t.start..t.end], "$iothub-enqueuedtime");
        let t = lexer.next_token().unwrap();
        assert_eq!(t.kind, Ident);
        assert_eq!(&src[t.start..t.end], "AND_x");
        let t = lexer.next_token().unwrap();
        assert_eq!(&src[t.start..t.end], "$a1");
        let e = lex_error("$ x");
        assert!(
            e.message.contains("expected a property name after '$'"),
            "{e}"
        );
    }

    #[test]
    fn comments_and_whitespace_are_skipped() {
        use TokenKind::*;
        assert_eq!(kinds(" a /* note */ =\n\t1 "), vec![Ident, Eq, Number(1.0)]);
        let e = lex_error("a /* open");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("'*/'"), "{e}");
    }

    #[test]
    fn lone_punctuation_is_an_error() {
        let e = lex_error("a ! b");
        assert_eq!(e.offset, 3);
        assert!(e.message.contains("expected '=' after '!'"), "{e}");
        let e = lex_error("a | b");
        assert!(e.message.contains("'||'"), "{e}");
        let e = lex_error("a ? b");
        assert!(e.message.contains("'??'"), "{e}");
        let e = lex_error("a # b");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("found unexpected character '#'"), "{e}");
    }

    #[test]
    fn body_path_segments() {
        let mut lexer = Lexer::new(".a.b-c[0][ 'x y' ][\"z\"].9 rest");
        let path = lexer.lex_path_segments().unwrap();
        assert_eq!(
            path,
            vec![
                PathSegment::Key("a".into()),
                PathSegment::Key("b-c".into()),
                PathSegment::Index(0),
                PathSegment::Key("x y".into()),
                PathSegment::Key("z".into()),
                PathSegment::Key("9".into()),
            ]
        );
        assert_eq!(lexer.next_token().unwrap().kind, TokenKind::Ident);
    }

    #[test]
    fn bad_body_paths() {
        let e = Lexer::new(". a").lex_path_segments().unwrap_err();
        assert!(
            e.message.contains("expected a property name after '.'"),
            "{e}"
        );
        let e = Lexer::new("[x]").lex_path_segments().unwrap_err();
        assert!(e.message.contains("array index or a quoted key"), "{e}");
        let e = Lexer::new("[0").lex_path_segments().unwrap_err();
        assert!(e.message.contains("']' to close '['"), "{e}");
        assert!(e.message.contains("end of input"), "{e}");
    }

    #[test]
    fn source_paths() {
        for ok in [
            "/*",
            "/messages/*",
            "/messages/modules/m/outputs/o",
            "/twinChangeNotifications",
            "/messages/modules/turbofan*",
        ] {
            let text = format!("  {ok} WHERE");
            let mut lexer = Lexer::new(&text);
            assert_eq!(lexer.lex_source_path().unwrap(), ok, "{ok}");
            assert_eq!(lexer.next_token().unwrap().start, ok.len() + 3);
        }
        for (bad, offset) in [
            ("messages", 0),
            ("/", 1),
            ("/a//b", 3),
            ("/a/", 3),
            ("/a/*/b", 4),
            ("/a(b)", 2),
            ("", 0),
        ] {
            let e = Lexer::new(bad).lex_source_path().unwrap_err();
            assert_eq!(e.offset, offset, "{bad}: {e}");
            assert!(e.message.starts_with("expected"), "{e}");
        }
    }
}
