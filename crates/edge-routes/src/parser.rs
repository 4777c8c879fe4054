//! Recursive-descent (precedence-climbing) parser for routes and conditions.

use crate::ast::{BinaryOp, Expr, Function, PREC_NEG, PREC_NOT};
use crate::error::ParseError;
use crate::lexer::{Lexer, Token, TokenKind};
use crate::{Route, Sink};

/// Deepest nesting of sub-expressions accepted (tree depth and parser
/// recursion), to keep recursion bounded everywhere.
const MAX_DEPTH: usize = 128;

/// Words that can never be application property names.
const RESERVED: [&str; 11] = [
    "AND",
    "OR",
    "NOT",
    "TRUE",
    "FALSE",
    "NULL",
    "UNDEFINED",
    "SELECT",
    "FROM",
    "WHERE",
    "INTO",
];

/// True if `word` is a reserved word (ignoring ASCII case).
pub(crate) fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

pub(crate) struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token>,
    /// Current nesting of `parse_expr` calls.
    recursion: usize,
}

impl<'s> Parser<'s> {
    pub fn new(src: &'s str) -> Self {
        Parser {
            lexer: Lexer::new(src),
            peeked: None,
            recursion: 0,
        }
    }

    fn src(&self) -> &'s str {
        self.lexer.src()
    }

    fn text(&self, token: &Token) -> &'s str {
        &self.src()[token.start..token.end]
    }

    fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.peeked.is_none() {
            let token = self.lexer.next_token()?;
            self.peeked = Some(token);
        }
        Ok(self.peeked.as_ref().expect("peeked token was just stored"))
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    /// How a token is named in an error message.
    fn describe(&self, token: &Token) -> String {
        match token.kind {
            TokenKind::Eof => "end of input".to_string(),
            TokenKind::Str(_) => format!("string {}", self.text(token)),
            _ => format!("'{}'", self.text(token)),
        }
    }

    fn error_at(&self, token: &Token, expected: &str) -> ParseError {
        ParseError::new(
            self.src(),
            token.start,
            format!("expected {expected}, found {}", self.describe(token)),
        )
    }

    fn is_keyword(&self, token: &Token, keyword: &str) -> bool {
        token.kind == TokenKind::Ident && self.text(token).eq_ignore_ascii_case(keyword)
    }

    fn expect(&mut self, kind: TokenKind, expected: &str) -> Result<Token, ParseError> {
        let token = self.next()?;
        if token.kind == kind {
            Ok(token)
        } else {
            Err(self.error_at(&token, expected))
        }
    }

    /// Parses a whole condition: an expression followed by end of input.
    pub fn parse_condition(&mut self) -> Result<Expr, ParseError> {
        let (expr, _) = self.parse_expr(0)?;
        let token = self.next()?;
        if token.kind == TokenKind::Eof {
            Ok(expr)
        } else {
            Err(self.error_at(&token, "an operator or end of condition"))
        }
    }

    /// Parses `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
    pub fn parse_route(&mut self) -> Result<Route, ParseError> {
        let mut token = self.next()?;
        if self.is_keyword(&token, "SELECT") {
            self.expect(TokenKind::Star, "'*' after SELECT")?;
            token = self.next()?;
        }
        if !self.is_keyword(&token, "FROM") {
            return Err(self.error_at(&token, "'FROM' at the start of the route"));
        }
        // Nothing is peeked here, so the lexer stands just after FROM.
        let source = self.lexer.lex_source_path()?;

        let mut token = self.next()?;
        let condition = if self.is_keyword(&token, "WHERE") {
            let (condition, _) = self.parse_expr(0)?;
            token = self.next()?;
            if !self.is_keyword(&token, "INTO") {
                return Err(self.error_at(&token, "an operator or 'INTO' after the condition"));
            }
            Some(condition)
        } else if self.is_keyword(&token, "INTO") {
            None
        } else {
            return Err(self.error_at(&token, "'WHERE' or 'INTO' after the source path"));
        };

        let sink = self.parse_sink()?;
        let token = self.next()?;
        if token.kind != TokenKind::Eof {
            return Err(self.error_at(&token, "end of route after the sink"));
        }
        Ok(Route {
            source,
            condition,
            sink,
        })
    }

    fn parse_sink(&mut self) -> Result<Sink, ParseError> {
        const EXPECTED: &str =
            "'$upstream' or 'BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")' after INTO";
        let token = self.next()?;
        if token.kind == TokenKind::Dollar
            && self.text(&token)[1..].eq_ignore_ascii_case("upstream")
        {
            return Ok(Sink::Upstream);
        }
        if !self.is_keyword(&token, "BrokeredEndpoint") {
            return Err(self.error_at(&token, EXPECTED));
        }
        self.expect(TokenKind::LParen, "'(' after BrokeredEndpoint")?;
        let endpoint = self.next()?;
        let TokenKind::Str(address) = &endpoint.kind else {
            return Err(self.error_at(
                &endpoint,
                "a quoted endpoint address such as \"/modules/<module>/inputs/<input>\"",
            ));
        };
        let Some((module, input)) = split_module_input(address) else {
            return Err(ParseError::new(
                self.src(),
                endpoint.start,
                format!(
                    "expected an endpoint address of the form \"/modules/<module>/inputs/<input>\", found {}",
                    self.describe(&endpoint)
                ),
            ));
        };
        let sink = Sink::Module {
            module: module.to_string(),
            input: input.to_string(),
        };
        self.expect(TokenKind::RParen, "')' after the BrokeredEndpoint address")?;
        Ok(sink)
    }

    /// Fails once a tree (or the parser's own recursion) gets deeper than
    /// [`MAX_DEPTH`], so that printing, evaluating and dropping the tree
    /// cannot exhaust the stack.
    fn check_depth(&self, depth: usize, at: usize) -> Result<usize, ParseError> {
        if depth > MAX_DEPTH {
            Err(ParseError::new(
                self.src(),
                at,
                format!(
                    "expected an expression nested at most {MAX_DEPTH} levels deep, found deeper nesting"
                ),
            ))
        } else {
            Ok(depth)
        }
    }

    /// Precedence climbing: parses an expression whose binary operators all
    /// have precedence `min_prec` or higher. Returns the tree and its depth.
    fn parse_expr(&mut self, min_prec: u8) -> Result<(Expr, usize), ParseError> {
        self.recursion += 1;
        let at = self.peek()?.start;
        self.check_depth(self.recursion, at)?;
        let (mut left, mut depth) = self.parse_prefix()?;
        loop {
            let token = self.peek()?.clone();
            let Some(op) = self.binary_op(&token) else {
                break;
            };
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            self.next()?;
            let (right, right_depth) = self.parse_expr(prec + 1)?;
            depth = self.check_depth(depth.max(right_depth) + 1, token.start)?;
            left = Expr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        self.recursion -= 1;
        Ok((left, depth))
    }

    fn binary_op(&self, token: &Token) -> Option<BinaryOp> {
        Some(match token.kind {
            TokenKind::Plus => BinaryOp::Add,
            TokenKind::Minus => BinaryOp::Sub,
            TokenKind::Star => BinaryOp::Mul,
            TokenKind::Slash => BinaryOp::Div,
            TokenKind::Percent => BinaryOp::Mod,
            TokenKind::Eq => BinaryOp::Eq,
            TokenKind::Ne => BinaryOp::Ne,
            TokenKind::Lt => BinaryOp::Lt,
            TokenKind::Le => BinaryOp::Le,
            TokenKind::Gt => BinaryOp::Gt,
            TokenKind::Ge => BinaryOp::Ge,
            TokenKind::Concat => BinaryOp::Concat,
            TokenKind::Coalesce => BinaryOp::Coalesce,
            TokenKind::Ident if self.is_keyword(token, "AND") => BinaryOp::And,
            TokenKind::Ident if self.is_keyword(token, "OR") => BinaryOp::Or,
            _ => return None,
        })
    }

    /// Parses `NOT x`, `-x`, or a primary expression.
    fn parse_prefix(&mut self) -> Result<(Expr, usize), ParseError> {
        let token = self.peek()?.clone();
        if self.is_keyword(&token, "NOT") {
            self.next()?;
            let (operand, depth) = self.parse_expr(PREC_NOT)?;
            let depth = self.check_depth(depth + 1, token.start)?;
            return Ok((Expr::Not(Box::new(operand)), depth));
        }
        if token.kind == TokenKind::Minus {
            self.next()?;
            if let TokenKind::Number(n) = self.peek()?.kind {
                // `-5` is the literal -5.
                self.next()?;
                return Ok((Expr::Number(-n), 1));
            }
            let (operand, depth) = self.parse_expr(PREC_NEG)?;
            let depth = self.check_depth(depth + 1, token.start)?;
            return Ok((Expr::Neg(Box::new(operand)), depth));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<(Expr, usize), ParseError> {
        let token = self.next()?;
        let leaf = match &token.kind {
            TokenKind::Number(n) => Expr::Number(*n),
            TokenKind::Str(s) => Expr::String(s.clone()),
            TokenKind::LParen => {
                let inner = self.parse_expr(0)?;
                let close = self.next()?;
                if close.kind != TokenKind::RParen {
                    return Err(self.error_at(&close, "')' to close '(' or an operator"));
                }
                return Ok(inner);
            }
            TokenKind::Dollar => self.finish_dollar(&token)?,
            TokenKind::LBrace => {
                // `{$name}` forces a system property / body reference.
                let inner = self.next()?;
                if inner.kind != TokenKind::Dollar {
                    return Err(self.error_at(&inner, "a '$' property after '{'"));
                }
                let expr = self.finish_dollar(&inner)?;
                self.expect(TokenKind::RBrace, "'}' after the escaped property")?;
                expr
            }
            TokenKind::Ident => return self.finish_ident(&token),
            _ => return Err(self.error_at(&token, "an expression")),
        };
        Ok((leaf, 1))
    }

    /// Builds the reference for a `$name` token, reading a `$body`/`$twin` path.
    fn finish_dollar(&mut self, token: &Token) -> Result<Expr, ParseError> {
        let name = &self.text(token)[1..];
        if name.eq_ignore_ascii_case("body") {
            // Nothing is peeked: the lexer stands right after the name.
            Ok(Expr::Body(self.lexer.lex_path_segments()?))
        } else if name.eq_ignore_ascii_case("twin") {
            Ok(Expr::Twin(self.lexer.lex_path_segments()?))
        } else {
            Ok(Expr::SystemProperty(name.to_string()))
        }
    }

    /// Literal keyword, function call or application property.
    fn finish_ident(&mut self, token: &Token) -> Result<(Expr, usize), ParseError> {
        let word = self.text(token);
        for (keyword, value) in [
            ("true", Expr::Bool(true)),
            ("false", Expr::Bool(false)),
            ("null", Expr::Null),
            ("undefined", Expr::Undefined),
        ] {
            if word.eq_ignore_ascii_case(keyword) {
                return Ok((value, 1));
            }
        }
        if is_reserved(word) {
            return Err(self.error_at(token, "an expression"));
        }
        if self.peek()?.kind == TokenKind::LParen {
            return self.finish_call(token);
        }
        Ok((Expr::AppProperty(word.to_string()), 1))
    }

    /// Parses the argument list of a call whose name is `token`.
    fn finish_call(&mut self, token: &Token) -> Result<(Expr, usize), ParseError> {
        let name = self.text(token);
        let Some(func) = Function::from_name(name) else {
            let known: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
            return Err(ParseError::new(
                self.src(),
                token.start,
                format!(
                    "expected a built-in function ({}), found unknown function '{name}'",
                    known.join(", ")
                ),
            ));
        };
        self.expect(TokenKind::LParen, "'('")?;
        let mut args = Vec::new();
        let mut depth = 0;
        if self.peek()?.kind == TokenKind::RParen {
            self.next()?;
        } else {
            loop {
                let (arg, arg_depth) = self.parse_expr(0)?;
                args.push(arg);
                depth = depth.max(arg_depth);
                let sep = self.next()?;
                match sep.kind {
                    TokenKind::Comma => continue,
                    TokenKind::RParen => break,
                    _ => return Err(self.error_at(&sep, "',' or ')' after function argument")),
                }
            }
        }
        let (min, max) = func.arity();
        if args.len() < min || max.is_some_and(|max| args.len() > max) {
            return Err(ParseError::new(
                self.src(),
                token.start,
                format!(
                    "expected {} for {}, found {}",
                    func.arity_text(),
                    func.name(),
                    match args.len() {
                        1 => "1 argument".to_string(),
                        n => format!("{n} arguments"),
                    }
                ),
            ));
        }
        let depth = self.check_depth(depth + 1, token.start)?;
        Ok((Expr::Call { func, args }, depth))
    }
}

/// Splits `/modules/{module}/inputs/{input}` into its two names.
fn split_module_input(address: &str) -> Option<(&str, &str)> {
    let rest = address.strip_prefix("/modules/")?;
    let (module, rest) = rest.split_once('/')?;
    let input = rest.strip_prefix("inputs/")?;
    if module.is_empty() || input.is_empty() || input.contains('/') {
        return None;
    }
    Some((module, input))
}

#[cfg(test)]
mod tests {
    use super::split_module_input;

    #[test]
    fn module_input_addresses() {
        assert_eq!(
            split_module_input("/modules/turbofanRouter/inputs/rulInput"),
            Some(("turbofanRouter", "rulInput"))
        );
        assert_eq!(split_module_input("/modules//inputs/x"), None);
        assert_eq!(split_module_input("/modules/m/inputs/"), None);
        assert_eq!(split_module_input("/modules/m/inputs/a/b"), None);
        assert_eq!(split_module_input("/modules/m/outputs/o"), None);
        assert_eq!(split_module_input("modules/m/inputs/i"), None);
        assert_eq!(split_module_input("/modules/m"), None);
    }
}
