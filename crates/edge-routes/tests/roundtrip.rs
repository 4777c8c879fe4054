//! Property tests: printing and re-parsing preserves trees; evaluation never panics.

mod common;

use common::Msg;
use edge_routes::{
    evaluate, parse_condition, parse_route, BinaryOp, Expr, Function, PathSegment, Route, Sink,
};
use proptest::prelude::*;
use proptest::string::string_regex;
use serde_json::json;

// ---------- random trees ----------

const RESERVED: [&str; 11] = [
    "and",
    "or",
    "not",
    "true",
    "false",
    "null",
    "undefined",
    "select",
    "from",
    "where",
    "into",
];

fn app_name() -> impl Strategy<Value = String> {
    string_regex("[A-Za-z_][A-Za-z0-9_]{0,6}")
        .unwrap()
        .prop_filter("reserved word", |s| {
            !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
        })
}

fn sys_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("connectionModuleId".to_string()),
        Just("iothub-enqueuedtime".to_string()),
        string_regex("[A-Za-z0-9_-]{1,10}").unwrap(),
    ]
    .prop_filter("body and twin have their own variants", |s| {
        !s.eq_ignore_ascii_case("body") && !s.eq_ignore_ascii_case("twin")
    })
}

fn path() -> impl Strategy<Value = Vec<PathSegment>> {
    let segment = prop_oneof![
        string_regex("[A-Za-z0-9_-]{1,6}")
            .unwrap()
            .prop_map(PathSegment::Key),
        string_regex("[ -~é]{0,6}")
            .unwrap()
            .prop_map(PathSegment::Key),
        (0usize..20).prop_map(PathSegment::Index),
    ];
    prop::collection::vec(segment, 0..4)
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1000i64..1000).prop_map(|i| i as f64),
        (-1000.0f64..1000.0),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::Undefined),
        Just(Expr::Null),
        any::<bool>().prop_map(Expr::Bool),
        number().prop_map(Expr::Number),
        string_regex("[ -~\\n\\té😀]{0,8}")
            .unwrap()
            .prop_map(Expr::String),
        app_name().prop_map(Expr::AppProperty),
        sys_name().prop_map(Expr::SystemProperty),
        path().prop_map(Expr::Body),
        path().prop_map(Expr::Twin),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        let call = (0..Function::ALL.len(), Just(inner.clone())).prop_flat_map(|(i, inner)| {
            let func = Function::ALL[i];
            let (min, max) = func.arity();
            let max = max.unwrap_or(min + 2);
            prop::collection::vec(inner, min..=max).prop_map(move |args| Expr::Call { func, args })
        });
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
            (
                prop::sample::select(BinaryOp::ALL.to_vec()),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, l, r)| Expr::Binary {
                    op,
                    left: Box::new(l),
                    right: Box::new(r),
                }),
            call,
        ]
    })
}

fn sink() -> impl Strategy<Value = Sink> {
    prop_oneof![
        Just(Sink::Upstream),
        (
            string_regex("[A-Za-z0-9_\\-\"\\\\ ]{1,8}").unwrap(),
            string_regex("[A-Za-z0-9_\\-\"\\\\ ]{1,8}").unwrap()
        )
            .prop_map(|(module, input)| Sink::Module { module, input }),
    ]
}

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/*".to_string()),
        Just("/messages/*".to_string()),
        Just("/twinChangeNotifications".to_string()),
        string_regex("/messages/modules/[A-Za-z0-9]{1,8}/outputs/([A-Za-z0-9]{1,8}|\\*)").unwrap(),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    (source(), prop::option::of(expr()), sink()).prop_map(|(source, condition, sink)| Route {
        source,
        condition,
        sink,
    })
}

// ---------- random route text from the grammar ----------

/// A word with each letter in random case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

fn ws() -> impl Strategy<Value = String> {
    string_regex("[ \\t\\n]{1,3}").unwrap()
}

fn opt_ws() -> impl Strategy<Value = String> {
    string_regex("[ \\t\\n]{0,2}").unwrap()
}

fn literal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        string_regex("[0-9]{1,4}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?").unwrap(),
        string_regex("0x[0-9a-fA-F]{1,4}").unwrap(),
        string_regex("'([a-z \"]|''|\\\\'|\\\\\\\\|\\\\n|\\\\u00e9){0,5}'").unwrap(),
        string_regex("\"([a-z ']|\"\"|\\\\\"|\\\\t){0,5}\"").unwrap(),
        any_case("true"),
        any_case("false"),
        any_case("null"),
        any_case("undefined"),
        app_name(),
        Just("$connectionModuleId".to_string()),
        Just("{$connectionDeviceId}".to_string()),
        Just("$iothub-enqueuedtime".to_string()),
        Just("$body.PredictedRul".to_string()),
        Just("$body.Weather.HistoricalData[0]['Month']".to_string()),
        Just("$twin.tags.floor".to_string()),
    ]
}

fn operator_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any_case("and"),
        any_case("or"),
        Just("=".to_string()),
        Just("!=".to_string()),
        Just("<>".to_string()),
        Just("<".to_string()),
        Just("<=".to_string()),
        Just(">".to_string()),
        Just(">=".to_string()),
        Just("+".to_string()),
        Just("-".to_string()),
        Just("*".to_string()),
        Just("/".to_string()),
        Just("%".to_string()),
        Just("||".to_string()),
        Just("??".to_string()),
    ]
}

fn condition_text() -> impl Strategy<Value = String> {
    literal_text().prop_recursive(4, 32, 3, |inner| {
        let call = (0..Function::ALL.len(), Just(inner.clone())).prop_flat_map(|(i, inner)| {
            let func = Function::ALL[i];
            let (min, max) = func.arity();
            let max = max.unwrap_or(min + 1);
            (
                any::<bool>(),
                prop::collection::vec(inner, min..=max),
                opt_ws(),
            )
                .prop_map(move |(lower, args, space)| {
                    let name = if lower {
                        func.name().to_lowercase()
                    } else {
                        func.name().to_string()
                    };
                    format!("{name}{space}({})", args.join(","))
                })
        });
        prop_oneof![
            (inner.clone(), ws(), operator_text(), ws(), inner.clone())
                .prop_map(|(l, w1, op, w2, r)| format!("{l}{w1}{op}{w2}{r}")),
            (any_case("not"), ws(), inner.clone()).prop_map(|(n, w, e)| format!("{n}{w}{e}")),
            (opt_ws(), inner.clone()).prop_map(|(w, e)| format!("-{w}{e}")),
            (opt_ws(), inner.clone(), opt_ws()).prop_map(|(a, e, b)| format!("({a}{e}{b})")),
            call,
        ]
    })
}

fn sink_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any_case("$upstream"),
        (
            any_case("BrokeredEndpoint"),
            opt_ws(),
            prop::bool::ANY,
            string_regex("[A-Za-z0-9_]{1,8}").unwrap(),
            string_regex("[A-Za-z0-9_]{1,8}").unwrap(),
        )
            .prop_map(|(kw, w, single, m, i)| {
                let q = if single { '\'' } else { '"' };
                format!("{kw}{w}({q}/modules/{m}/inputs/{i}{q})")
            }),
    ]
}

fn route_text() -> impl Strategy<Value = String> {
    (
        opt_ws(),
        prop::option::of((any_case("select"), ws())),
        any_case("from"),
        ws(),
        source(),
        prop::option::of((ws(), any_case("where"), ws(), condition_text())),
        ws(),
        any_case("into"),
        ws(),
        sink_text(),
        opt_ws(),
    )
        .prop_map(
            |(lead, select, from, w1, source, condition, w2, into, w3, sink, trail)| {
                let select = select.map_or(String::new(), |(kw, w)| format!("{kw}{w}*{w}"));
                let condition = condition.map_or(String::new(), |(a, kw, b, text)| {
                    format!("{a}{kw}{b}{text}")
                });
                format!("{lead}{select}{from}{w1}{source}{condition}{w2}{into}{w3}{sink}{trail}")
            },
        )
}

fn sample_message() -> Msg {
    Msg::new()
        .sys("connectionModuleId", "m")
        .sys("connectionDeviceId", "d")
        .app("DeadLetter", "false")
        .app("a", "12")
        .body(json!({
            "PredictedRul": 42.0,
            "Weather": {"HistoricalData": [{"Month": "Feb"}]},
            "a": {"b": [1, "x", null, true]}
        }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn expr_display_parses_back_to_the_same_tree(e in expr()) {
        let text = e.to_string();
        let parsed = parse_condition(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        prop_assert_eq!(&parsed, &e, "text was {:?}", text);
    }

    #[test]
    fn route_display_parses_back_to_the_same_route(r in route()) {
        let text = r.to_string();
        let parsed = parse_route(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        prop_assert_eq!(&parsed, &r, "text was {:?}", text);
    }

    #[test]
    fn route_text_parses_prints_and_parses_again(text in route_text()) {
        let first = parse_route(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        let printed = first.to_string();
        let second = parse_route(&printed)
            .map_err(|err| TestCaseError::fail(format!("{printed:?}: {err}")))?;
        prop_assert_eq!(&second, &first, "printed as {:?}", printed);
        prop_assert_eq!(second.to_string(), printed);
    }

    #[test]
    fn printing_preserves_evaluation(e in expr()) {
        let msg = sample_message();
        let reparsed = parse_condition(&e.to_string()).unwrap();
        prop_assert_eq!(evaluate(&reparsed, &msg), evaluate(&e, &msg));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,40}") {
        let _ = parse_condition(&text);
        let _ = parse_route(&text);
    }

    #[test]
    fn parse_errors_point_inside_the_input(text in "[ -~]{0,30}") {
        if let Err(e) = parse_condition(&text) {
            prop_assert!(e.offset <= text.len());
            prop_assert!(e.message.starts_with("expected") || e.message.starts_with("unterminated"),
                "{}", e.message);
        }
    }
}
