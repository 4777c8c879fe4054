//! Parse errors: position (offset, line, column) and a message naming what was expected.

use edge_routes::{parse_condition, parse_route, ParseError};

#[track_caller]
fn route_err(text: &str) -> ParseError {
    match parse_route(text) {
        Ok(r) => panic!("{text:?} parsed as {r}"),
        Err(e) => e,
    }
}

#[track_caller]
fn cond_err(text: &str) -> ParseError {
    match parse_condition(text) {
        Ok(e) => panic!("{text:?} parsed as {e}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_error(e: &ParseError, offset: usize, line: usize, column: usize, fragments: &[&str]) {
    assert_eq!(
        (e.offset, e.line, e.column),
        (offset, line, column),
        "position of {e}"
    );
    assert!(
        e.message.starts_with("expected") || e.message.starts_with("unterminated"),
        "{e}"
    );
    for fragment in fragments {
        assert!(
            e.message.contains(fragment),
            "{e:?} should mention {fragment:?}"
        );
    }
}

#[test]
fn unterminated_string() {
    let e = cond_err("a = 'abc");
    assert_error(&e, 4, 1, 5, &["unterminated string", "expected closing '"]);
    let e = route_err("FROM /* WHERE a = \"abc INTO $upstream");
    assert_error(
        &e,
        18,
        1,
        19,
        &["unterminated string", "expected closing \""],
    );
}

#[test]
fn missing_into() {
    let text = "FROM /messages/* WHERE a = 1";
    let e = route_err(text);
    assert_error(&e, text.len(), 1, 29, &["'INTO'", "found end of input"]);
    let e = route_err("FROM /messages/* $upstream");
    assert_error(&e, 17, 1, 18, &["'WHERE' or 'INTO'", "found '$upstream'"]);
    let e = route_err("FROM /messages/*");
    assert_error(&e, 16, 1, 17, &["'WHERE' or 'INTO'", "end of input"]);
}

#[test]
fn bad_sink() {
    let e = route_err("FROM /* INTO $downstream");
    assert_error(
        &e,
        13,
        1,
        14,
        &["'$upstream' or 'BrokeredEndpoint(", "found '$downstream'"],
    );
    let e = route_err("FROM /* INTO Endpoint(\"/modules/m/inputs/i\")");
    assert_error(&e, 13, 1, 14, &["'$upstream'", "found 'Endpoint'"]);
    let e = route_err("FROM /* INTO BrokeredEndpoint(\"/modules/m/outputs/o\")");
    assert_error(
        &e,
        30,
        1,
        31,
        &[
            "/modules/<module>/inputs/<input>",
            "found string \"/modules/m/outputs/o\"",
        ],
    );
    let e = route_err("FROM /* INTO BrokeredEndpoint(x)");
    assert_error(&e, 30, 1, 31, &["quoted endpoint address", "found 'x'"]);
    let e = route_err("FROM /* INTO BrokeredEndpoint \"/modules/m/inputs/i\"");
    assert_error(&e, 30, 1, 31, &["'(' after BrokeredEndpoint"]);
    let text = "FROM /* INTO BrokeredEndpoint(\"/modules/m/inputs/i\"";
    let e = route_err(text);
    assert_error(&e, text.len(), 1, text.len() + 1, &["')'", "end of input"]);
    let e = route_err("FROM /* INTO");
    assert_error(&e, 12, 1, 13, &["'$upstream'", "end of input"]);
}

#[test]
fn unknown_function() {
    let e = cond_err("FOO(1) = 2");
    assert_error(
        &e,
        0,
        1,
        1,
        &[
            "built-in function",
            "IS_DEFINED",
            "found unknown function 'FOO'",
        ],
    );
    let e = cond_err("a = 1 AND\n  frobnicate(x)");
    assert_error(&e, 12, 2, 3, &["unknown function 'frobnicate'"]);
}

#[test]
fn wrong_arity() {
    let e = cond_err("SUBSTRING('a')");
    assert_error(
        &e,
        0,
        1,
        1,
        &["2 or 3 arguments for SUBSTRING", "found 1 argument"],
    );
    let e = cond_err("x AND IS_DEFINED()");
    assert_error(
        &e,
        6,
        1,
        7,
        &["1 argument for IS_DEFINED", "found 0 arguments"],
    );
    let e = cond_err("CONCAT('a')");
    assert_error(&e, 0, 1, 1, &["at least 2 arguments for CONCAT"]);
    let e = cond_err("abs(1, 2)");
    assert_error(&e, 0, 1, 1, &["1 argument for ABS", "found 2 arguments"]);
    let e = cond_err("POWER(1, 2, 3)");
    assert_error(&e, 0, 1, 1, &["2 arguments for POWER", "found 3 arguments"]);
}

#[test]
fn trailing_garbage() {
    let e = cond_err("a = 1 b");
    assert_error(
        &e,
        6,
        1,
        7,
        &["an operator or end of condition", "found 'b'"],
    );
    let e = cond_err("a = 1)");
    assert_error(&e, 5, 1, 6, &["end of condition", "found ')'"]);
    let e = route_err("FROM /* INTO $upstream extra");
    assert_error(&e, 23, 1, 24, &["end of route", "found 'extra'"]);
    let e = route_err("FROM /* INTO $upstream;");
    assert_error(&e, 22, 1, 23, &["found unexpected character ';'"]);
}

#[test]
fn unclosed_call_before_into() {
    let text = "FROM /* WHERE IS_DEFINED($x INTO $upstream";
    let e = route_err(text);
    assert_error(
        &e,
        28,
        1,
        29,
        &["',' or ')' after function argument", "found 'INTO'"],
    );
    assert_eq!(
        e.to_string(),
        "line 1, column 29: expected ',' or ')' after function argument, found 'INTO'"
    );
}

#[test]
fn unbalanced_parentheses() {
    let e = cond_err("(a = 1");
    assert_error(&e, 6, 1, 7, &["')'", "end of input"]);
    let e = cond_err("a = )");
    assert_error(&e, 4, 1, 5, &["an expression", "found ')'"]);
}

#[test]
fn missing_operands() {
    let e = cond_err("");
    assert_error(&e, 0, 1, 1, &["an expression", "end of input"]);
    let e = cond_err("a =");
    assert_error(&e, 3, 1, 4, &["an expression", "end of input"]);
    let e = cond_err("a = AND b");
    assert_error(&e, 4, 1, 5, &["an expression", "found 'AND'"]);
    let e = route_err("FROM /* WHERE INTO $upstream");
    assert_error(&e, 14, 1, 15, &["an expression", "found 'INTO'"]);
    let e = cond_err("NOT");
    assert_error(&e, 3, 1, 4, &["an expression"]);
}

#[test]
fn bad_route_start_and_source() {
    let e = route_err("INTO $upstream");
    assert_error(&e, 0, 1, 1, &["'FROM'", "found 'INTO'"]);
    let e = route_err("FROM messages INTO $upstream");
    assert_error(&e, 5, 1, 6, &["source path starting with '/'", "found 'm'"]);
    let e = route_err("FROM /a/*/b INTO $upstream");
    assert_error(&e, 9, 1, 10, &["'*'"]);
    let e = route_err("SELECT FROM /* INTO $upstream");
    assert_error(&e, 7, 1, 8, &["'*' after SELECT", "found 'FROM'"]);
}

#[test]
fn bad_property_references() {
    let e = cond_err("$body. = 1");
    assert_error(&e, 6, 1, 7, &["property name after '.'"]);
    let e = cond_err("$body[x]");
    assert_error(&e, 6, 1, 7, &["array index or a quoted key"]);
    let e = cond_err("{a}");
    assert_error(&e, 1, 1, 2, &["'$' property after '{'", "found 'a'"]);
    let e = cond_err("{$a");
    assert_error(&e, 3, 1, 4, &["'}'"]);
    let e = cond_err("$ = 1");
    assert_error(&e, 1, 1, 2, &["property name after '$'"]);
}

#[test]
fn multi_line_positions() {
    let text = "FROM /messages/*\nWHERE a = 1\n  AND b = 'x\nINTO $upstream";
    let e = route_err(text);
    // The string opens on line 3, column 11.
    assert_error(
        &e,
        text.find("'x").unwrap(),
        3,
        11,
        &["unterminated string"],
    );
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
    let e = cond_err(&deep);
    assert!(e.message.contains("nested"), "{e}");
    let deep_not = format!("{}true", "NOT ".repeat(1000));
    assert!(cond_err(&deep_not).message.contains("nested"));
    // Reasonable nesting is fine.
    let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
    assert!(parse_condition(&ok).is_ok());
}

#[test]
fn long_operator_chains_are_bounded_too() {
    // A chain of N ORs is a tree N deep; evaluation recurses that deep.
    let ok = vec!["a = 1"; 60].join(" OR ");
    assert!(parse_condition(&ok).is_ok());
    let long = vec!["a = 1"; 2000].join(" OR ");
    let e = cond_err(&long);
    assert!(e.message.contains("nested at most 128 levels"), "{e}");
}
