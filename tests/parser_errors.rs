//! Error reporting of `kiln::parser::parse`: the first line is `file:line:col: message`,
//! the offending line follows with a caret under the column, every error in the file is
//! reported (not just the first), and columns are right inside continuation lines.

use kiln::parser::{parse, ParseErrorKind, ParseErrors};

fn errors_of(source: &str) -> ParseErrors {
    match parse(source, "Dockerfile") {
        Ok(_) => panic!("expected errors for {source:?}"),
        Err(errors) => errors,
    }
}

/// Column of the caret in a rendered error: position of `^` relative to the `| ` gutter.
fn caret_column(rendered: &str) -> usize {
    let caret_line = rendered.lines().nth(2).expect("caret line");
    let gutter = caret_line.find("| ").expect("gutter") + 2;
    caret_line[gutter..].find('^').expect("caret") + 1
}

#[test]
fn first_line_is_file_line_col_message() {
    let errors = errors_of("FROM alpine\n    RUNN make\n");
    let error = &errors.errors[0];
    assert_eq!(error.line, 2);
    assert_eq!(error.column, 5);
    let rendered = error.render();
    assert_eq!(
        rendered.lines().next().unwrap(),
        "Dockerfile:2:5: unknown instruction: RUNN"
    );
    assert_eq!(rendered.lines().nth(1).unwrap(), " 2 |     RUNN make");
    assert_eq!(caret_column(&rendered), 5);
    assert!(rendered.contains("did you mean RUN?"), "{rendered}");
}

#[test]
fn all_errors_of_a_file_are_collected_in_order() {
    let errors = errors_of("FROM alpine\nRUNN a\nCOPY --nope a b\nWORKDIR\nFROM x AS 9\n");
    let lines: Vec<usize> = errors.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5]);
    let text = errors.to_string();
    assert!(
        text.starts_with("Dockerfile:2:1: unknown instruction: RUNN\n"),
        "{text}"
    );
    assert!(
        text.contains("Dockerfile:3:6: unknown flag: --nope"),
        "{text}"
    );
    assert!(
        text.contains("Dockerfile:4:1: WORKDIR requires exactly one argument"),
        "{text}"
    );
    assert!(
        text.contains("Dockerfile:5:11: invalid name for build stage"),
        "{text}"
    );
}

#[test]
fn flag_error_on_a_continuation_line_points_there() {
    let errors = errors_of(
        "FROM alpine\nRUN --mount=type=cache,target=/x \\\n    --network=bogus \\\n    true\n",
    );
    let error = &errors.errors[0];
    assert_eq!(
        error.kind,
        ParseErrorKind::InvalidNetwork {
            value: "bogus".into()
        }
    );
    assert_eq!((error.line, error.column), (3, 5));
    assert_eq!(error.source_line, "    --network=bogus \\");
    assert_eq!(caret_column(&error.render()), 5);
    assert!(error.render().contains("expected default, none or host"));
}

#[test]
fn caret_follows_tabs_and_unicode() {
    let errors = errors_of("FROM alpine\n\tCOPY --é=1 a b\n");
    let error = &errors.errors[0];
    assert_eq!((error.line, error.column), (2, 7));
    let rendered = error.render();
    let caret_line = rendered.lines().nth(2).unwrap();
    assert!(caret_line.ends_with("| \t     ^"), "{caret_line:?}");
}

#[test]
fn file_level_errors_have_places() {
    let errors = errors_of("# just a comment\n\n");
    assert_eq!(errors.errors[0].kind, ParseErrorKind::NoInstructions);
    assert!(errors.to_string().starts_with("Dockerfile:"));

    let errors = errors_named("FROM a\nRUN <<EOF\nbody\n", "build/Dockerfile.dev");
    assert_eq!(
        errors.errors[0].kind,
        ParseErrorKind::UnterminatedHeredoc { name: "EOF".into() }
    );
    assert!(errors
        .to_string()
        .starts_with("build/Dockerfile.dev:2:1: unterminated heredoc"));

    let long = format!("FROM a\nLABEL x={}\n", "a".repeat(70_000));
    let errors = errors_named(&long, "Dockerfile");
    assert_eq!(errors.errors[0].kind, ParseErrorKind::LineTooLong);
    assert_eq!(errors.errors[0].line, 2);
    // The rendering cuts long lines around the caret.
    assert!(errors.to_string().len() < 1000);
}

fn errors_named(source: &str, name: &str) -> ParseErrors {
    parse(source, name).expect_err("expected errors")
}

#[test]
fn bad_json_and_directive_errors() {
    let errors = errors_of("FROM a\nCMD [\"a\", 1]\n");
    assert_eq!(errors.errors[0].kind, ParseErrorKind::JsonNotStrings);
    assert_eq!((errors.errors[0].line, errors.errors[0].column), (2, 5));

    let errors = errors_of("# escape=x\nFROM a\n");
    assert!(matches!(
        errors.errors[0].kind,
        ParseErrorKind::InvalidEscapeToken { .. }
    ));

    let errors = errors_of("# escape=`\n# escape=\\\nFROM a\n");
    assert_eq!(
        errors.errors[0].kind,
        ParseErrorKind::DuplicateDirective {
            name: "escape".into()
        }
    );
    assert_eq!(errors.errors[0].line, 2);

    let errors = errors_of("FROM a\nSHELL [\"sh\", \"-c\"\n");
    assert_eq!(errors.errors[0].kind, ParseErrorKind::ShellNotJson);
}
