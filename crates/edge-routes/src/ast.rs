//! The syntax tree of a condition, and its canonical text form.

use std::fmt;

/// A parsed condition expression.
///
/// Its [`Display`](fmt::Display) form is canonical text that parses back to
/// an equal tree: keywords and function names in upper case, strings in
/// single quotes, `<>` for inequality, and only the parentheses that
/// precedence requires.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The `undefined` literal.
    Undefined,
    /// The `null` literal.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number literal (finite when produced by the parser; a non-finite
    /// value evaluates to undefined). A minus sign written directly in
    /// front of a number literal is folded into it (`-5` is `Number(-5.0)`).
    Number(f64),
    /// A string literal, with its escapes already resolved.
    String(String),
    /// A system property: `$name`, stored without the `$` (for example
    /// `connectionModuleId` or `iothub-enqueuedtime`). Never `body` or
    /// `twin`, which have their own variants.
    SystemProperty(String),
    /// An application property, referenced by a bare identifier.
    AppProperty(String),
    /// A path into the JSON body: `$body`, `$body.a.b`, `$body.a[0]`,
    /// `$body['key with spaces']`.
    Body(Vec<PathSegment>),
    /// A path into the device twin: `$twin.properties.desired.x`. Parsed but
    /// always evaluates to undefined (no twin is available to a route here).
    Twin(Vec<PathSegment>),
    /// `NOT operand`.
    Not(Box<Expr>),
    /// Unary minus applied to something other than a bare number literal.
    Neg(Box<Expr>),
    /// A binary operation.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// A built-in function call; the argument count is checked at parse time.
    Call {
        /// The function.
        func: Function,
        /// Its arguments, in order.
        args: Vec<Expr>,
    },
}

/// One step of a `$body` or `$twin` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// An object member: `.name` or `['name']`.
    Key(String),
    /// An array element: `[3]`.
    Index(usize),
}

/// Binary operators, from lowest to highest precedence group:
/// `??`; `OR`; `AND`; `=` `<>` `!=`; `<` `<=` `>` `>=`; `+` `-` `||`; `*` `/` `%`.
/// All are left-associative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a ?? b`: `a` unless it is undefined, else `b` (an edgeHub extension).
    Coalesce,
    /// `OR`, three-valued.
    Or,
    /// `AND`, three-valued.
    And,
    /// `=`.
    Eq,
    /// `<>` or `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `+` (numbers only).
    Add,
    /// `-`.
    Sub,
    /// `||`: string concatenation (an edgeHub extension).
    Concat,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%` (remainder, sign of the dividend).
    Mod,
}

/// Precedence of `NOT`: it binds looser than comparisons and tighter than `AND`.
pub(crate) const PREC_NOT: u8 = 4;
/// Precedence of unary minus.
pub(crate) const PREC_NEG: u8 = 9;
/// Precedence of literals, references, calls and parenthesised expressions.
const PREC_PRIMARY: u8 = 10;

impl BinaryOp {
    /// Every operator.
    pub const ALL: [BinaryOp; 15] = [
        BinaryOp::Coalesce,
        BinaryOp::Or,
        BinaryOp::And,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Concat,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Mod,
    ];

    /// Binding strength: a higher number binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Coalesce => 1,
            BinaryOp::Or => 2,
            BinaryOp::And => 3,
            // PREC_NOT (4) sits here.
            BinaryOp::Eq | BinaryOp::Ne => 5,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 6,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Concat => 7,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 8,
        }
    }

    /// The canonical spelling of the operator.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Coalesce => "??",
            BinaryOp::Or => "OR",
            BinaryOp::And => "AND",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "||",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// The built-in functions of the routing query language. Names are matched
/// case-insensitively when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `ABS(n)`: absolute value.
    Abs,
    /// `EXP(n)`: e raised to `n`.
    Exp,
    /// `POWER(base, exponent)`.
    Power,
    /// `SQUARE(n)`: `n * n`.
    Square,
    /// `CEILING(n)`: smallest integer not below `n`.
    Ceiling,
    /// `FLOOR(n)`: largest integer not above `n`.
    Floor,
    /// `SIGN(n)`: -1, 0 or 1.
    Sign,
    /// `SQRT(n)`: square root (undefined for negative `n`).
    Sqrt,
    /// `AS_NUMBER(x)`: a number, or a string holding one, as a number.
    AsNumber,
    /// `IS_ARRAY(x)`.
    IsArray,
    /// `IS_BOOL(x)`.
    IsBool,
    /// `IS_DEFINED(x)`: true unless `x` is undefined.
    IsDefined,
    /// `IS_NULL(x)`.
    IsNull,
    /// `IS_NUMBER(x)`.
    IsNumber,
    /// `IS_OBJECT(x)`.
    IsObject,
    /// `IS_PRIMITIVE(x)`: string, number, boolean or null.
    IsPrimitive,
    /// `IS_STRING(x)`.
    IsString,
    /// `CONCAT(s1, s2, ...)`: two or more strings joined.
    Concat,
    /// `LENGTH(s)`: number of characters.
    Length,
    /// `LOWER(s)`.
    Lower,
    /// `UPPER(s)`.
    Upper,
    /// `SUBSTRING(s, start [, length])`: zero-based, in characters.
    Substring,
    /// `INDEX_OF(s, fragment)`: zero-based character index, or -1.
    IndexOf,
    /// `STARTS_WITH(s, prefix)`.
    StartsWith,
    /// `ENDS_WITH(s, suffix)`.
    EndsWith,
    /// `CONTAINS(s, fragment)`.
    Contains,
}

impl Function {
    /// Every built-in function.
    pub const ALL: [Function; 26] = [
        Function::Abs,
        Function::Exp,
        Function::Power,
        Function::Square,
        Function::Ceiling,
        Function::Floor,
        Function::Sign,
        Function::Sqrt,
        Function::AsNumber,
        Function::IsArray,
        Function::IsBool,
        Function::IsDefined,
        Function::IsNull,
        Function::IsNumber,
        Function::IsObject,
        Function::IsPrimitive,
        Function::IsString,
        Function::Concat,
        Function::Length,
        Function::Lower,
        Function::Upper,
        Function::Substring,
        Function::IndexOf,
        Function::StartsWith,
        Function::EndsWith,
        Function::Contains,
    ];

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        match self {
            Function::Abs => "ABS",
            Function::Exp => "EXP",
            Function::Power => "POWER",
            Function::Square => "SQUARE",
            Function::Ceiling => "CEILING",
            Function::Floor => "FLOOR",
            Function::Sign => "SIGN",
            Function::Sqrt => "SQRT",
            Function::AsNumber => "AS_NUMBER",
            Function::IsArray => "IS_ARRAY",
            Function::IsBool => "IS_BOOL",
            Function::IsDefined => "IS_DEFINED",
            Function::IsNull => "IS_NULL",
            Function::IsNumber => "IS_NUMBER",
            Function::IsObject => "IS_OBJECT",
            Function::IsPrimitive => "IS_PRIMITIVE",
            Function::IsString => "IS_STRING",
            Function::Concat => "CONCAT",
            Function::Length => "LENGTH",
            Function::Lower => "LOWER",
            Function::Upper => "UPPER",
            Function::Substring => "SUBSTRING",
            Function::IndexOf => "INDEX_OF",
            Function::StartsWith => "STARTS_WITH",
            Function::EndsWith => "ENDS_WITH",
            Function::Contains => "CONTAINS",
        }
    }

    /// Looks a function up by name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The accepted argument count: minimum, and maximum (`None` for no limit).
    pub fn arity(self) -> (usize, Option<usize>) {
        match self {
            Function::Power
            | Function::IndexOf
            | Function::StartsWith
            | Function::EndsWith
            | Function::Contains => (2, Some(2)),
            Function::Substring => (2, Some(3)),
            Function::Concat => (2, None),
            _ => (1, Some(1)),
        }
    }

    /// Human-readable argument count, e.g. `1 argument`, `2 or 3 arguments`.
    pub(crate) fn arity_text(self) -> String {
        match self.arity() {
            (1, Some(1)) => "1 argument".to_string(),
            (min, Some(max)) if min == max => format!("{min} arguments"),
            (min, Some(max)) if max == min + 1 => format!("{min} or {max} arguments"),
            (min, Some(max)) => format!("{min} to {max} arguments"),
            (min, None) => format!("at least {min} arguments"),
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Expr {
    /// Binding strength of this node when printed (see [`BinaryOp::precedence`]).
    fn precedence(&self) -> u8 {
        match self {
            Expr::Binary { op, .. } => op.precedence(),
            Expr::Not(_) => PREC_NOT,
            Expr::Neg(_) => PREC_NEG,
            _ => PREC_PRIMARY,
        }
    }

    /// Writes `self`, in parentheses if it binds looser than `min`.
    fn write_operand(&self, min: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Undefined => f.write_str("undefined"),
            Expr::Null => f.write_str("null"),
            Expr::Bool(true) => f.write_str("true"),
            Expr::Bool(false) => f.write_str("false"),
            Expr::Number(n) => write_number(*n, f),
            Expr::String(s) => write_quoted(s, '\'', f),
            Expr::SystemProperty(name) => write!(f, "${name}"),
            Expr::AppProperty(name) => f.write_str(name),
            Expr::Body(path) => {
                f.write_str("$body")?;
                write_path(path, f)
            }
            Expr::Twin(path) => {
                f.write_str("$twin")?;
                write_path(path, f)
            }
            Expr::Not(operand) => {
                f.write_str("NOT ")?;
                operand.write_operand(PREC_NOT, f)
            }
            Expr::Neg(operand) => {
                f.write_str("-")?;
                if let Expr::Number(_) = **operand {
                    // `-5` would read back as the literal -5, not as Neg(5).
                    write!(f, "({operand})")
                } else {
                    operand.write_operand(PREC_NEG, f)
                }
            }
            Expr::Binary { op, left, right } => {
                let prec = op.precedence();
                left.write_operand(prec, f)?;
                write!(f, " {op} ")?;
                // Left-associative: an equal-precedence right operand needs parentheses.
                right.write_operand(prec + 1, f)
            }
            Expr::Call { func, args } => {
                write!(f, "{func}(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Writes a finite number so that it lexes back to the same value.
fn write_number(n: f64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        // Exact: integers below 2^53 convert losslessly.
        write!(f, "{}", n as i64)
    } else {
        // Shortest text that round-trips; uses an exponent for very large or small values.
        write!(f, "{n:?}")
    }
}

/// Writes `s` between `quote` characters, escaping the quote and backslashes.
pub(crate) fn write_quoted(s: &str, quote: char, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use fmt::Write;
    f.write_char(quote)?;
    for c in s.chars() {
        if c == quote || c == '\\' {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char(quote)
}

/// True for characters allowed in `$` names and in `.name` path steps.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn write_path(path: &[PathSegment], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for segment in path {
        match segment {
            PathSegment::Key(key) if !key.is_empty() && key.chars().all(is_name_char) => {
                write!(f, ".{key}")?;
            }
            PathSegment::Key(key) => {
                f.write_str("[")?;
                write_quoted(key, '\'', f)?;
                f.write_str("]")?;
            }
            PathSegment::Index(i) => write!(f, "[{i}]")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(op: BinaryOp, l: Expr, r: Expr) -> Expr {
        Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
        }
    }
    fn app(n: &str) -> Expr {
        Expr::AppProperty(n.to_string())
    }

    #[test]
    fn function_lookup_ignores_case() {
        assert_eq!(Function::from_name("is_defined"), Some(Function::IsDefined));
        assert_eq!(Function::from_name("Index_Of"), Some(Function::IndexOf));
        assert_eq!(Function::from_name("nope"), None);
        for func in Function::ALL {
            assert_eq!(Function::from_name(func.name()), Some(func));
        }
    }

    #[test]
    fn arity_text() {
        assert_eq!(Function::Abs.arity_text(), "1 argument");
        assert_eq!(Function::Power.arity_text(), "2 arguments");
        assert_eq!(Function::Substring.arity_text(), "2 or 3 arguments");
        assert_eq!(Function::Concat.arity_text(), "at least 2 arguments");
    }

    #[test]
    fn numbers_print_plainly() {
        assert_eq!(Expr::Number(100.0).to_string(), "100");
        assert_eq!(Expr::Number(-3.0).to_string(), "-3");
        assert_eq!(Expr::Number(2.5).to_string(), "2.5");
        assert_eq!(Expr::Number(1e300).to_string(), "1e300");
        assert_eq!(Expr::Number(1.5e-9).to_string(), "1.5e-9");
    }

    #[test]
    fn strings_print_single_quoted_with_escapes() {
        assert_eq!(Expr::String("it's".into()).to_string(), r"'it\'s'");
        assert_eq!(Expr::String(r"a\b".into()).to_string(), r"'a\\b'");
        assert_eq!(
            Expr::String("say \"hi\"".into()).to_string(),
            "'say \"hi\"'"
        );
    }

    #[test]
    fn paths_print_dotted_or_bracketed() {
        let e = Expr::Body(vec![
            PathSegment::Key("a".into()),
            PathSegment::Index(2),
            PathSegment::Key("weird key".into()),
            PathSegment::Key(String::new()),
        ]);
        assert_eq!(e.to_string(), "$body.a[2]['weird key']['']");
        assert_eq!(Expr::Twin(vec![]).to_string(), "$twin");
    }

    #[test]
    fn only_needed_parentheses_are_printed() {
        let e = b(
            BinaryOp::Mul,
            b(BinaryOp::Add, app("a"), app("b")),
            app("c"),
        );
        assert_eq!(e.to_string(), "(a + b) * c");
        let e = b(
            BinaryOp::Add,
            app("a"),
            b(BinaryOp::Mul, app("b"), app("c")),
        );
        assert_eq!(e.to_string(), "a + b * c");
        let e = b(
            BinaryOp::Sub,
            app("a"),
            b(BinaryOp::Sub, app("b"), app("c")),
        );
        assert_eq!(e.to_string(), "a - (b - c)");
        let e = b(
            BinaryOp::Sub,
            b(BinaryOp::Sub, app("a"), app("b")),
            app("c"),
        );
        assert_eq!(e.to_string(), "a - b - c");
    }

    #[test]
    fn not_and_neg_print_with_parentheses_when_needed() {
        let e = Expr::Not(Box::new(b(BinaryOp::Or, app("a"), app("b"))));
        assert_eq!(e.to_string(), "NOT (a OR b)");
        let e = Expr::Not(Box::new(b(BinaryOp::Eq, app("a"), app("b"))));
        assert_eq!(e.to_string(), "NOT a = b");
        let e = Expr::Neg(Box::new(Expr::Number(5.0)));
        assert_eq!(e.to_string(), "-(5)");
        let e = Expr::Neg(Box::new(b(BinaryOp::Add, app("a"), app("b"))));
        assert_eq!(e.to_string(), "-(a + b)");
        let e = b(BinaryOp::Eq, app("a"), Expr::Not(Box::new(app("b"))));
        assert_eq!(e.to_string(), "a = (NOT b)");
    }

    #[test]
    fn calls_print_upper_case_with_commas() {
        let e = Expr::Call {
            func: Function::Substring,
            args: vec![app("s"), Expr::Number(0.0), Expr::Number(2.0)],
        };
        assert_eq!(e.to_string(), "SUBSTRING(s, 0, 2)");
    }
}
