//! Parsing conditions into trees: literals, references, operators, precedence, calls.

use edge_routes::{parse_condition, BinaryOp, Expr, Function, PathSegment};

fn p(text: &str) -> Expr {
    parse_condition(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"))
}

fn bin(op: BinaryOp, left: Expr, right: Expr) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(left),
        right: Box::new(right),
    }
}

fn app(name: &str) -> Expr {
    Expr::AppProperty(name.to_string())
}

fn num(x: f64) -> Expr {
    Expr::Number(x)
}

fn call(func: Function, args: Vec<Expr>) -> Expr {
    Expr::Call { func, args }
}

fn key(k: &str) -> PathSegment {
    PathSegment::Key(k.to_string())
}

#[test]
fn number_literals() {
    assert_eq!(p("7"), num(7.0));
    assert_eq!(p("3.25"), num(3.25));
    assert_eq!(p("0.5e1"), num(5.0));
    assert_eq!(p("1E-2"), num(0.01));
    assert_eq!(p(".75"), num(0.75));
    assert_eq!(p("0x10"), num(16.0));
}

#[test]
fn negative_number_literal_is_folded() {
    assert_eq!(p("-7"), num(-7.0));
    assert_eq!(p("- 2.5"), num(-2.5));
    assert_eq!(p("-(7)"), Expr::Neg(Box::new(num(7.0))));
    assert_eq!(p("--7"), Expr::Neg(Box::new(num(-7.0))));
    assert_eq!(p("-x"), Expr::Neg(Box::new(app("x"))));
    assert_eq!(p("a - -1"), bin(BinaryOp::Sub, app("a"), num(-1.0)));
    assert_eq!(p("a-1"), bin(BinaryOp::Sub, app("a"), num(1.0)));
}

#[test]
fn string_literals() {
    assert_eq!(p("'hot'"), Expr::String("hot".into()));
    assert_eq!(p("\"hot\""), Expr::String("hot".into()));
    assert_eq!(p(r"'it\'s'"), Expr::String("it's".into()));
    assert_eq!(p("'it''s'"), Expr::String("it's".into()));
    assert_eq!(p(r#""a\"b""#), Expr::String("a\"b".into()));
    assert_eq!(p(r"'\u00e9'"), Expr::String("é".into()));
    assert_eq!(p("''"), Expr::String(String::new()));
}

#[test]
fn keyword_literals_ignore_case() {
    assert_eq!(p("true"), Expr::Bool(true));
    assert_eq!(p("TRUE"), Expr::Bool(true));
    assert_eq!(p("False"), Expr::Bool(false));
    assert_eq!(p("null"), Expr::Null);
    assert_eq!(p("NULL"), Expr::Null);
    assert_eq!(p("undefined"), Expr::Undefined);
}

#[test]
fn system_properties() {
    assert_eq!(
        p("$connectionDeviceId"),
        Expr::SystemProperty("connectionDeviceId".into())
    );
    assert_eq!(
        p("$iothub-enqueuedtime"),
        Expr::SystemProperty("iothub-enqueuedtime".into())
    );
    assert_eq!(
        p("$contentType"),
        Expr::SystemProperty("contentType".into())
    );
    // The escaped form means the same thing.
    assert_eq!(
        p("{$connectionModuleId}"),
        Expr::SystemProperty("connectionModuleId".into())
    );
    assert_eq!(p("{ $body.a }"), Expr::Body(vec![key("a")]));
}

#[test]
fn application_properties() {
    assert_eq!(p("DeadLetter"), app("DeadLetter"));
    assert_eq!(p("processing_path2"), app("processing_path2"));
    assert_eq!(p("_x"), app("_x"));
}

#[test]
fn body_paths() {
    assert_eq!(p("$body"), Expr::Body(vec![]));
    assert_eq!(
        p("$body.PredictedRul"),
        Expr::Body(vec![key("PredictedRul")])
    );
    assert_eq!(
        p("$body.Weather.HistoricalData[0].Month"),
        Expr::Body(vec![
            key("Weather"),
            key("HistoricalData"),
            PathSegment::Index(0),
            key("Month"),
        ])
    );
    assert_eq!(p("$BODY.a"), Expr::Body(vec![key("a")]));
    assert_eq!(
        p("$body['weird key'][\"x\"][12]"),
        Expr::Body(vec![key("weird key"), key("x"), PathSegment::Index(12)])
    );
    assert_eq!(p("$body.a-b"), Expr::Body(vec![key("a-b")]));
    assert_eq!(p("$body[0]"), Expr::Body(vec![PathSegment::Index(0)]));
}

#[test]
fn twin_paths() {
    assert_eq!(
        p("$twin.properties.desired.telemetryConfig"),
        Expr::Twin(vec![
            key("properties"),
            key("desired"),
            key("telemetryConfig")
        ])
    );
    assert_eq!(p("$Twin"), Expr::Twin(vec![]));
}

#[test]
fn every_binary_operator() {
    for (text, op) in [
        ("a = b", BinaryOp::Eq),
        ("a != b", BinaryOp::Ne),
        ("a <> b", BinaryOp::Ne),
        ("a < b", BinaryOp::Lt),
        ("a <= b", BinaryOp::Le),
        ("a > b", BinaryOp::Gt),
        ("a >= b", BinaryOp::Ge),
        ("a + b", BinaryOp::Add),
        ("a - b", BinaryOp::Sub),
        ("a * b", BinaryOp::Mul),
        ("a / b", BinaryOp::Div),
        ("a % b", BinaryOp::Mod),
        ("a || b", BinaryOp::Concat),
        ("a ?? b", BinaryOp::Coalesce),
        ("a AND b", BinaryOp::And),
        ("a and b", BinaryOp::And),
        ("a Or b", BinaryOp::Or),
    ] {
        assert_eq!(p(text), bin(op, app("a"), app("b")), "{text}");
    }
}

#[test]
fn not_ignores_case() {
    let expected = Expr::Not(Box::new(app("a")));
    assert_eq!(p("NOT a"), expected);
    assert_eq!(p("not a"), expected);
    assert_eq!(p("nOt a"), expected);
}

#[test]
fn multiplication_binds_tighter_than_addition() {
    assert_eq!(
        p("a + b * c"),
        bin(
            BinaryOp::Add,
            app("a"),
            bin(BinaryOp::Mul, app("b"), app("c"))
        )
    );
    assert_eq!(
        p("a * b - c % d"),
        bin(
            BinaryOp::Sub,
            bin(BinaryOp::Mul, app("a"), app("b")),
            bin(BinaryOp::Mod, app("c"), app("d"))
        )
    );
}

#[test]
fn arithmetic_binds_tighter_than_comparison() {
    assert_eq!(
        p("a + 1 < b * 2"),
        bin(
            BinaryOp::Lt,
            bin(BinaryOp::Add, app("a"), num(1.0)),
            bin(BinaryOp::Mul, app("b"), num(2.0))
        )
    );
}

#[test]
fn relational_binds_tighter_than_equality() {
    assert_eq!(
        p("a = b < c"),
        bin(
            BinaryOp::Eq,
            app("a"),
            bin(BinaryOp::Lt, app("b"), app("c"))
        )
    );
}

#[test]
fn comparison_binds_tighter_than_not() {
    assert_eq!(
        p("NOT a = b"),
        Expr::Not(Box::new(bin(BinaryOp::Eq, app("a"), app("b"))))
    );
}

#[test]
fn not_binds_tighter_than_and() {
    assert_eq!(
        p("NOT a AND b"),
        bin(BinaryOp::And, Expr::Not(Box::new(app("a"))), app("b"))
    );
    assert_eq!(
        p("a AND NOT b"),
        bin(BinaryOp::And, app("a"), Expr::Not(Box::new(app("b"))))
    );
}

#[test]
fn and_binds_tighter_than_or() {
    assert_eq!(
        p("a OR b AND c"),
        bin(
            BinaryOp::Or,
            app("a"),
            bin(BinaryOp::And, app("b"), app("c"))
        )
    );
    assert_eq!(
        p("a AND b OR c"),
        bin(
            BinaryOp::Or,
            bin(BinaryOp::And, app("a"), app("b")),
            app("c")
        )
    );
}

#[test]
fn coalesce_is_loosest() {
    assert_eq!(
        p("a ?? b OR c"),
        bin(
            BinaryOp::Coalesce,
            app("a"),
            bin(BinaryOp::Or, app("b"), app("c"))
        )
    );
}

#[test]
fn unary_minus_binds_tightest() {
    assert_eq!(
        p("-a * b"),
        bin(BinaryOp::Mul, Expr::Neg(Box::new(app("a"))), app("b"))
    );
}

#[test]
fn operators_are_left_associative() {
    assert_eq!(
        p("a - b - c"),
        bin(
            BinaryOp::Sub,
            bin(BinaryOp::Sub, app("a"), app("b")),
            app("c")
        )
    );
    assert_eq!(
        p("a / b / c"),
        bin(
            BinaryOp::Div,
            bin(BinaryOp::Div, app("a"), app("b")),
            app("c")
        )
    );
    assert_eq!(
        p("a OR b OR c"),
        bin(
            BinaryOp::Or,
            bin(BinaryOp::Or, app("a"), app("b")),
            app("c")
        )
    );
}

#[test]
fn parentheses_override_precedence() {
    assert_eq!(
        p("(a + b) * c"),
        bin(
            BinaryOp::Mul,
            bin(BinaryOp::Add, app("a"), app("b")),
            app("c")
        )
    );
    assert_eq!(
        p("a AND (b OR c)"),
        bin(
            BinaryOp::And,
            app("a"),
            bin(BinaryOp::Or, app("b"), app("c"))
        )
    );
    assert_eq!(p("((a))"), app("a"));
}

#[test]
fn function_calls() {
    assert_eq!(
        p("IS_DEFINED($connectionModuleId)"),
        call(
            Function::IsDefined,
            vec![Expr::SystemProperty("connectionModuleId".into())]
        )
    );
    assert_eq!(
        p("is_defined ( x )"),
        call(Function::IsDefined, vec![app("x")])
    );
    assert_eq!(
        p("substring(s, 1 + 1, 2)"),
        call(
            Function::Substring,
            vec![app("s"), bin(BinaryOp::Add, num(1.0), num(1.0)), num(2.0)]
        )
    );
    assert_eq!(
        p("CONCAT('a', 'b', 'c', 'd')"),
        call(
            Function::Concat,
            vec![
                Expr::String("a".into()),
                Expr::String("b".into()),
                Expr::String("c".into()),
                Expr::String("d".into())
            ]
        )
    );
}

#[test]
fn every_function_name_parses_with_its_arity() {
    for func in Function::ALL {
        let (min, _) = func.arity();
        let args = vec!["1"; min].join(", ");
        let text = format!("{}({args})", func.name().to_lowercase());
        assert_eq!(p(&text), call(func, vec![num(1.0); min]), "{text}");
    }
}

#[test]
fn whitespace_and_comments_are_free() {
    assert_eq!(
        p("\n\ta\t=\r\n  1 /* one */"),
        bin(BinaryOp::Eq, app("a"), num(1.0))
    );
    assert_eq!(p("a=1"), bin(BinaryOp::Eq, app("a"), num(1.0)));
}

#[test]
fn tutorial_condition() {
    assert_eq!(
        p("$body.PredictedRul < 100 AND DeadLetter <> 'true'"),
        bin(
            BinaryOp::And,
            bin(
                BinaryOp::Lt,
                Expr::Body(vec![key("PredictedRul")]),
                num(100.0)
            ),
            bin(BinaryOp::Ne, app("DeadLetter"), Expr::String("true".into()))
        )
    );
}

#[test]
fn from_str_parses_conditions() {
    let e: Expr = "a = 1".parse().unwrap();
    assert_eq!(e, bin(BinaryOp::Eq, app("a"), num(1.0)));
}

#[test]
fn display_is_canonical() {
    for (input, canonical) in [
        ("a=1", "a = 1"),
        ("a != 'x'", "a <> 'x'"),
        ("not is_defined($x) and y", "NOT IS_DEFINED($x) AND y"),
        ("(a + b) * c", "(a + b) * c"),
        ("a + (b * c)", "a + b * c"),
        ("\"q\"", "'q'"),
        ("$BODY.a[0]['b c']", "$body.a[0]['b c']"),
        ("{$x}", "$x"),
        ("TRUE or Null", "true OR null"),
        ("-(2)", "-(2)"),
        ("0x10", "16"),
        ("(NOT a) = b", "(NOT a) = b"),
    ] {
        assert_eq!(p(input).to_string(), canonical, "{input}");
        assert_eq!(p(canonical), p(input), "{canonical} re-parses");
    }
}

#[test]
fn listed_system_properties_parse_as_system_properties() {
    for name in edge_routes::SYSTEM_PROPERTIES {
        assert_eq!(
            p(&format!("${name}")),
            Expr::SystemProperty(name.to_string())
        );
    }
}
