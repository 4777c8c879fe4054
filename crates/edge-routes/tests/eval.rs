//! Evaluating conditions: properties, body paths, operators, three-valued logic, functions.

mod common;

use common::{check, check0, n, s, Msg, F, NULL, T, U};
use edge_routes::{evaluate, parse_condition, Value};
use serde_json::json;

fn body_msg() -> Msg {
    Msg::new().body(json!({
        "PredictedRul": 42.5,
        "name": "engine-7",
        "flag": true,
        "nothing": null,
        "count": 3,
        "big": 18446744073709551615u64,
        "Weather": {
            "Temperature": 50,
            "HistoricalData": [
                {"Month": "Feb", "Temperature": 40},
                {"Month": "Jan", "Temperature": 30}
            ]
        },
        "weird key": "w",
        "list": [1, "two", null, [3]],
        "obj": {"x": 1}
    }))
}

// ----- literals -----

#[test]
fn literals_evaluate_to_themselves() {
    check0("42", n(42.0));
    check0("-1.5", n(-1.5));
    check0("'x'", s("x"));
    check0("true", T);
    check0("false", F);
    check0("null", NULL);
    check0("undefined", U);
}

// ----- properties -----

#[test]
fn system_properties_come_from_the_caller() {
    let msg = Msg::new()
        .sys("connectionDeviceId", "dev1")
        .sys("iothub-enqueuedtime", "2024-01-01T00:00:00Z");
    check("$connectionDeviceId", &msg, s("dev1"));
    check("$connectiondeviceid", &msg, s("dev1"));
    check("$iothub-enqueuedtime", &msg, s("2024-01-01T00:00:00Z"));
    check("$connectionModuleId", &msg, U);
}

#[test]
fn application_properties_are_strings_by_exact_name() {
    let msg = Msg::new().app("DeadLetter", "true").app("severity", "5");
    check("DeadLetter", &msg, s("true"));
    check("deadletter", &msg, U);
    check("severity", &msg, s("5"));
    // A string is not a number: mixed comparison is undefined.
    check("severity = 5", &msg, U);
    check("AS_NUMBER(severity) = 5", &msg, T);
}

#[test]
fn system_and_application_properties_are_separate() {
    let msg = Msg::new().sys("messageId", "sys").app("messageId", "app");
    check("$messageId", &msg, s("sys"));
    check("messageId", &msg, s("app"));
}

#[test]
fn twin_is_always_undefined() {
    check("$twin.properties.desired.x", &body_msg(), U);
    check("$twin", &body_msg(), U);
}

// ----- body -----

#[test]
fn body_scalars() {
    let msg = body_msg();
    check("$body.PredictedRul", &msg, n(42.5));
    check("$body.name", &msg, s("engine-7"));
    check("$body.flag", &msg, T);
    check("$body.nothing", &msg, NULL);
    check("$body.count", &msg, n(3.0));
    check("$body.big", &msg, n(18446744073709551615.0));
}

#[test]
fn body_nested_objects_and_arrays() {
    let msg = body_msg();
    check("$body.Weather.Temperature", &msg, n(50.0));
    check("$body.Weather.HistoricalData[0].Month", &msg, s("Feb"));
    check("$body.Weather.HistoricalData[1].Temperature", &msg, n(30.0));
    check("$body.Weather.HistoricalData[2].Month", &msg, U);
    check("$body.list[1]", &msg, s("two"));
    check("$body.list[3][0]", &msg, n(3.0));
    check("$body['weird key']", &msg, s("w"));
    check("$body.Weather['Temperature']", &msg, n(50.0));
}

#[test]
fn body_path_mismatches_are_undefined() {
    let msg = body_msg();
    check("$body.missing", &msg, U);
    check("$body.name.x", &msg, U);
    check("$body.list.x", &msg, U);
    check("$body.obj[0]", &msg, U);
    check("$body.predictedrul", &msg, U);
}

#[test]
fn body_containers_are_arrays_and_objects() {
    let msg = body_msg();
    let expr = parse_condition("$body.list").unwrap();
    assert!(matches!(evaluate(&expr, &msg), Value::Array(items) if items.len() == 4));
    let expr = parse_condition("$body.obj").unwrap();
    assert!(matches!(evaluate(&expr, &msg), Value::Object(map) if map.len() == 1));
    let expr = parse_condition("$body").unwrap();
    assert!(matches!(evaluate(&expr, &msg), Value::Object(_)));
}

#[test]
fn no_body_means_undefined() {
    check0("$body.PredictedRul", U);
    check0("$body", U);
    let msg = Msg::new().body(json!([10, 20]));
    check("$body[1]", &msg, n(20.0));
    check("$body.a", &msg, U);
}

// ----- arithmetic -----

#[test]
fn arithmetic_operators() {
    check0("1 + 2", n(3.0));
    check0("5 - 7", n(-2.0));
    check0("3 * 4", n(12.0));
    check0("7 / 2", n(3.5));
    check0("7 % 3", n(1.0));
    check0("-7 % 3", n(-1.0));
    check0("2 + 3 * 4", n(14.0));
    check0("(2 + 3) * 4", n(20.0));
    check0("10 - 4 - 3", n(3.0));
    check0("-(2 + 3)", n(-5.0));
    check0("--2", n(2.0));
}

#[test]
fn arithmetic_type_mismatch_is_undefined() {
    check0("1 + '2'", U);
    check0("'a' + 'b'", U);
    check0("true * 2", U);
    check0("null - 1", U);
    check0("undefined + 1", U);
    check0("-'x'", U);
    check0("missing + 1", U);
}

#[test]
fn arithmetic_without_a_finite_result_is_undefined() {
    check0("1 / 0", U);
    check0("0 / 0", U);
    check0("5 % 0", U);
    check0("1e308 * 10", U);
}

#[test]
fn string_concatenation_operator() {
    check0("'ab' || 'cd'", s("abcd"));
    check0("'ab' || 1", U);
    let msg = Msg::new().app("a", "x");
    check("a || '-' || a", &msg, s("x-x"));
}

#[test]
fn coalesce_operator() {
    check0("undefined ?? 1", n(1.0));
    check0("2 ?? 1", n(2.0));
    check0("null ?? 1", NULL);
    check0("missing ?? missing2", U);
}

// ----- comparison -----

#[test]
fn number_comparisons() {
    check0("1 = 1", T);
    check0("1 = 1.0", T);
    check0("1 = 2", F);
    check0("1 != 2", T);
    check0("1 <> 1", F);
    check0("1 < 2", T);
    check0("2 < 1", F);
    check0("2 <= 2", T);
    check0("3 <= 2", F);
    check0("3 > 2", T);
    check0("2 > 2", F);
    check0("2 >= 2", T);
    check0("1 >= 2", F);
    check0("0x10 = 16", T);
}

#[test]
fn string_comparisons_are_case_sensitive_and_ordinal() {
    check0("'abc' = 'abc'", T);
    check0("'abc' = 'ABC'", F);
    check0("'abc' <> 'ABC'", T);
    check0("'a' < 'b'", T);
    check0("'B' < 'a'", T);
    check0("'abc' >= 'abd'", F);
}

#[test]
fn boolean_and_null_equality() {
    check0("true = true", T);
    check0("true = false", F);
    check0("true <> false", T);
    check0("true < false", U);
    check0("null = null", T);
    check0("null <> null", F);
    check0("null < null", U);
}

#[test]
fn mixed_type_comparisons_are_undefined() {
    check0("1 = '1'", U);
    check0("'1' <> 1", U);
    check0("true = 'true'", U);
    check0("null = 0", U);
    check0("undefined = undefined", U);
    check0("missing = 'x'", U);
    check0("missing <> 'x'", U);
    check("$body.obj = $body.obj", &body_msg(), U);
    check("$body.list < 1", &body_msg(), U);
}

// ----- three-valued logic -----

#[test]
fn and_truth_table() {
    // Rows: left; columns: true, false, undefined.
    let values = ["true", "false", "undefined"];
    let expected = [[T, F, U], [F, F, F], [U, F, U]];
    for (i, l) in values.iter().enumerate() {
        for (j, r) in values.iter().enumerate() {
            check0(&format!("{l} AND {r}"), expected[i][j].clone());
        }
    }
}

#[test]
fn or_truth_table() {
    let values = ["true", "false", "undefined"];
    let expected = [[T, T, T], [T, F, U], [T, U, U]];
    for (i, l) in values.iter().enumerate() {
        for (j, r) in values.iter().enumerate() {
            check0(&format!("{l} OR {r}"), expected[i][j].clone());
        }
    }
}

#[test]
fn not_truth_table() {
    check0("NOT true", F);
    check0("NOT false", T);
    check0("NOT undefined", U);
    check0("NOT null", U);
    check0("NOT 1", U);
    check0("NOT NOT true", T);
}

#[test]
fn non_boolean_operands_of_logic_are_unknown() {
    check0("1 AND true", U);
    check0("1 AND false", F);
    check0("'x' OR true", T);
    check0("'x' OR false", U);
    check0("null AND null", U);
}

#[test]
fn logic_precedence_in_evaluation() {
    check0("true OR true AND false", T);
    check0("(true OR true) AND false", F);
    check0("NOT false AND false", F);
    check0("NOT 1 = 2", T);
}

// ----- functions: type checking -----

#[test]
fn is_defined() {
    let msg = body_msg().sys("connectionModuleId", "m");
    check("IS_DEFINED($connectionModuleId)", &msg, T);
    check("IS_DEFINED($connectionDeviceId)", &msg, F);
    check("IS_DEFINED($body.nothing)", &msg, T);
    check("IS_DEFINED($body.missing)", &msg, F);
    check("IS_DEFINED(1 + 'a')", &msg, F);
    check("IS_DEFINED(undefined)", &msg, F);
    check("IS_DEFINED(null)", &msg, T);
}

#[test]
fn type_predicates() {
    let msg = body_msg();
    let cases: [(&str, [Value<'static>; 8]); 9] = [
        // IS_ARRAY IS_BOOL IS_NULL IS_NUMBER IS_OBJECT IS_PRIMITIVE IS_STRING IS_DEFINED
        ("$body.list", [T, F, F, F, F, F, F, T]),
        ("$body.flag", [F, T, F, F, F, T, F, T]),
        ("$body.nothing", [F, F, T, F, F, T, F, T]),
        ("$body.count", [F, F, F, T, F, T, F, T]),
        ("$body.obj", [F, F, F, F, T, F, F, T]),
        ("$body.name", [F, F, F, F, F, T, T, T]),
        ("$body.missing", [F, F, F, F, F, F, F, F]),
        ("'lit'", [F, F, F, F, F, T, T, T]),
        ("undefined", [F, F, F, F, F, F, F, F]),
    ];
    let funcs = [
        "IS_ARRAY",
        "IS_BOOL",
        "IS_NULL",
        "IS_NUMBER",
        "IS_OBJECT",
        "IS_PRIMITIVE",
        "IS_STRING",
        "IS_DEFINED",
    ];
    for (arg, expected) in cases {
        for (func, want) in funcs.iter().zip(expected) {
            check(&format!("{func}({arg})"), &msg, want);
        }
    }
}

#[test]
fn as_number() {
    let msg = Msg::new()
        .app("n", " 12.5 ")
        .app("bad", "12x")
        .app("inf", "inf");
    check("AS_NUMBER(n)", &msg, n(12.5));
    check("AS_NUMBER(bad)", &msg, U);
    check("AS_NUMBER(inf)", &msg, U);
    check("AS_NUMBER(7)", &msg, n(7.0));
    check("AS_NUMBER('-3e2')", &msg, n(-300.0));
    check("AS_NUMBER(true)", &msg, U);
    check("AS_NUMBER(null)", &msg, U);
    check("AS_NUMBER(missing)", &msg, U);
}

// ----- functions: math -----

#[test]
fn math_functions() {
    check0("ABS(-3)", n(3.0));
    check0("ABS(3)", n(3.0));
    check0("EXP(0)", n(1.0));
    check0("EXP(1)", n(std::f64::consts::E));
    check0("POWER(2, 10)", n(1024.0));
    check0("POWER(4, 0.5)", n(2.0));
    check0("SQUARE(-3)", n(9.0));
    check0("CEILING(1.2)", n(2.0));
    check0("CEILING(-1.2)", n(-1.0));
    check0("FLOOR(1.8)", n(1.0));
    check0("FLOOR(-1.2)", n(-2.0));
    check0("SIGN(-4)", n(-1.0));
    check0("SIGN(0)", n(0.0));
    check0("SIGN(2.5)", n(1.0));
    check0("SQRT(16)", n(4.0));
}

#[test]
fn math_functions_reject_other_types_and_bad_results() {
    for func in ["ABS", "EXP", "SQUARE", "CEILING", "FLOOR", "SIGN", "SQRT"] {
        check0(&format!("{func}('1')"), U);
        check0(&format!("{func}(true)"), U);
        check0(&format!("{func}(null)"), U);
        check0(&format!("{func}(missing)"), U);
    }
    check0("POWER('2', 2)", U);
    check0("POWER(2, missing)", U);
    check0("SQRT(-1)", U);
    check0("EXP(1000)", U);
    check0("POWER(0, -1)", U);
}

// ----- functions: strings -----

#[test]
fn concat() {
    check0("CONCAT('a', 'b')", s("ab"));
    check0("CONCAT('a', 'b', 'c')", s("abc"));
    check0("CONCAT('a', 1)", U);
    check0("CONCAT('a', missing)", U);
    let msg = Msg::new().sys("connectionDeviceId", "d1");
    check("CONCAT($connectionDeviceId, '/x') = 'd1/x'", &msg, T);
}

#[test]
fn length() {
    check0("LENGTH('abc')", n(3.0));
    check0("LENGTH('')", n(0.0));
    check0("LENGTH('héllo')", n(5.0));
    check0("LENGTH(3)", U);
    check0("LENGTH(missing)", U);
    check("LENGTH($body.name) = 8", &body_msg(), T);
}

#[test]
fn lower_and_upper() {
    check0("LOWER('AbC')", s("abc"));
    check0("UPPER('AbC')", s("ABC"));
    check0("UPPER('straße')", s("STRASSE"));
    check0("LOWER(1)", U);
    check0("UPPER(missing)", U);
    let msg = Msg::new().app("level", "CRITICAL");
    check("LOWER(level) = 'critical'", &msg, T);
}

#[test]
fn substring() {
    check0("SUBSTRING('abcdef', 2)", s("cdef"));
    check0("SUBSTRING('abcdef', 1, 3)", s("bcd"));
    check0("SUBSTRING('abcdef', 0, 100)", s("abcdef"));
    check0("SUBSTRING('abcdef', 10)", s(""));
    check0("SUBSTRING('abcdef', -2, 2)", s("ab"));
    check0("SUBSTRING('abcdef', 1, -1)", s(""));
    check0("SUBSTRING('abcdef', 1.9, 2.9)", s("bc"));
    check0("SUBSTRING('héllo', 1, 2)", s("él"));
    check0("SUBSTRING(123, 1)", U);
    check0("SUBSTRING('abc', '1')", U);
    check0("SUBSTRING('abc', 1, 'x')", U);
    check0("SUBSTRING(missing, 0, 1)", U);
    check("SUBSTRING($body.name, 0, 6)", &body_msg(), s("engine"));
}

#[test]
fn index_of() {
    check0("INDEX_OF('abcabc', 'ca')", n(2.0));
    check0("INDEX_OF('abc', 'x')", n(-1.0));
    check0("INDEX_OF('abc', '')", n(0.0));
    check0("INDEX_OF('héllo', 'l')", n(2.0));
    check0("INDEX_OF('abc', 1)", U);
    check0("INDEX_OF(missing, 'a')", U);
}

#[test]
fn starts_ends_contains() {
    check0("STARTS_WITH('turbofan', 'turbo')", T);
    check0("STARTS_WITH('turbofan', 'Turbo')", F);
    check0("ENDS_WITH('turbofan', 'fan')", T);
    check0("ENDS_WITH('turbofan', 'turbo')", F);
    check0("CONTAINS('turbofan', 'bof')", T);
    check0("CONTAINS('turbofan', 'x')", F);
    for func in ["STARTS_WITH", "ENDS_WITH", "CONTAINS"] {
        check0(&format!("{func}('a', 1)"), U);
        check0(&format!("{func}(1, 'a')"), U);
        check0(&format!("{func}(missing, 'a')"), U);
    }
}

#[test]
fn function_names_ignore_case_when_evaluated() {
    check0("abs(-1)", n(1.0));
    check0("Starts_With('ab', 'a')", T);
}

#[test]
fn string_results_borrow_where_possible() {
    let msg = body_msg();
    let expr = parse_condition("SUBSTRING($body.name, 0, 6)").unwrap();
    assert!(matches!(
        evaluate(&expr, &msg),
        Value::String(std::borrow::Cow::Borrowed("engine"))
    ));
    let expr = parse_condition("'lit'").unwrap();
    assert!(matches!(
        evaluate(&expr, &msg),
        Value::String(std::borrow::Cow::Borrowed("lit"))
    ));
}

#[test]
fn value_is_true_only_for_boolean_true() {
    assert!(T.is_true());
    assert!(!F.is_true());
    assert!(!U.is_true());
    assert!(!n(1.0).is_true());
    assert!(!s("true").is_true());
}

#[test]
fn non_finite_number_nodes_evaluate_to_undefined() {
    let msg = Msg::new();
    assert_eq!(evaluate(&edge_routes::Expr::Number(f64::NAN), &msg), U);
    assert_eq!(evaluate(&edge_routes::Expr::Number(f64::INFINITY), &msg), U);
}

#[test]
fn deepest_accepted_trees_evaluate_and_print() {
    let nots = format!("{}true", "NOT ".repeat(120));
    check0(&nots, T);
    let chain = vec!["a = 1"; 120].join(" OR ");
    let msg = Msg::new().app("a", "x");
    check(&chain, &msg, U);
    let expr = parse_condition(&chain).unwrap();
    assert_eq!(parse_condition(&expr.to_string()).unwrap(), expr);
}
