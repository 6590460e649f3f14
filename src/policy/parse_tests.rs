//! Parsing in parts gives what parsing each file whole gives: the same
//! policies in the same order, or the same first error at the same line.

use std::str::FromStr;

use cedar_policy::PolicySet;

use super::PolicyError;
use super::load::load_dir_with;
use super::parse::{Parallelism, cut};
use super::tests::{TempDir, shipped_schema};

const WHOLE: Parallelism = Parallelism {
    threads: 1,
    min_part: usize::MAX,
};
/// A part per policy or so, on three threads.
const PARTS: Parallelism = Parallelism {
    threads: 3,
    min_part: 1,
};

/// What a load gives: the policies' ids in order, or the error.
fn outcome(files: &[(&str, &str)], parallelism: Parallelism) -> Result<Vec<String>, String> {
    let schema = shipped_schema();
    let mut all = vec![("mcp.cedarschema", schema.as_str())];
    all.extend_from_slice(files);
    let dir = TempDir::new(&all);
    match load_dir_with(dir.path(), parallelism) {
        Ok(engine) => Ok(engine.rules.iter().map(|r| r.id.to_string()).collect()),
        Err(e) => Err(e.to_string()),
    }
}

fn ping(id: &str) -> String {
    format!("@id(\"{id}\") permit (principal, action == Mcp::Action::\"ping\", resource);\n")
}

/// Three files of `n` policies each, with `bad` (if any) as policy
/// `at` of the second.
fn files(n: usize, at: usize, bad: &str) -> [String; 3] {
    let mut texts = [String::new(), String::new(), String::new()];
    for (f, text) in texts.iter_mut().enumerate() {
        for i in 0..n {
            if f == 1 && i == at {
                text.push_str(bad);
            } else {
                text.push_str(&ping(&format!("f{f}-{i}")));
            }
        }
    }
    texts
}

#[test]
fn cuts_end_after_a_policy_only() {
    let text = concat!(
        "@id(\"a;\") permit (principal, action, resource) // ; here\n",
        "when { resource.name == \"x;\\\";y\" };\n",
        "// a comment; with \"quotes;\n",
        "@id(\"b\") forbid (principal, action, resource);  ",
    );
    for count in 1..8 {
        let parts: Vec<_> = cut(text, count).collect();
        assert!(parts.len() <= count.max(1));
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, text.len());
        for pair in parts.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let policies: usize = parts
            .iter()
            .map(|part| {
                PolicySet::from_str(&text[part.clone()])
                    .unwrap()
                    .policies()
                    .count()
            })
            .sum();
        assert_eq!(policies, 2, "{parts:?}");
    }
    assert_eq!(cut(text, 2).count(), 2);
}

#[test]
fn parts_give_the_same_policies_in_the_same_order() {
    let [a, b, c] = files(40, usize::MAX, "");
    let files = [("a.cedar", a.as_str()), ("b.cedar", &b), ("c.cedar", &c)];
    let whole = outcome(&files, WHOLE);
    assert_eq!(whole.as_ref().map(Vec::len), Ok(120));
    assert_eq!(outcome(&files, PARTS), whole);
}

#[test]
fn parts_give_the_same_first_error_at_the_same_line() {
    let bad_workload = "@id(\"w\") permit (principal == Mcp::Workload::\"spiffe://EXAMPLE.org/x\", action, resource);\n";
    let invalid = "@id(\"v\") permit (principal, action == Mcp::Action::\"tools/call\", resource)\nwhen { resource.nmae == \"x\" };\n";
    let cases = [
        (
            "no @id",
            "permit (principal, action, resource);\n".to_owned(),
        ),
        ("an @id of the first file", ping("f0-3")),
        ("an @id of its own file", ping("f1-2")),
        ("an @id of the third file", ping("f2-1")),
        ("a workload id", bad_workload.to_owned()),
        (
            "a syntax error",
            "permit (principal, action resource);\n".to_owned(),
        ),
        (
            "a template",
            "@id(\"t\") permit (principal == ?principal, action, resource);\n".to_owned(),
        ),
        ("a validation error", invalid.to_owned()),
    ];
    for (name, bad) in cases {
        for at in [0, 17, 39] {
            let [a, b, c] = files(40, at, &bad);
            let files = [("a.cedar", a.as_str()), ("b.cedar", &b), ("c.cedar", &c)];
            let whole = outcome(&files, WHOLE);
            assert!(whole.is_err(), "{name} at {at}: {whole:?}");
            assert_eq!(outcome(&files, PARTS), whole, "{name} at {at}");
        }
    }
}

#[test]
fn errors_in_several_files_report_the_first_file() {
    let [a, b, c] = files(30, usize::MAX, "");
    let a = a.replace("f0-20", "f0-1");
    let c = format!("{c}permit (principal, action resource);\n");
    let b = format!("{b}permit (principal, action, resource);\n");
    let files = [("a.cedar", a.as_str()), ("b.cedar", &b), ("c.cedar", &c)];
    let whole = outcome(&files, WHOLE);
    let Err(message) = &whole else {
        panic!("{whole:?}")
    };
    assert!(
        message.starts_with("a.cedar:21: policy @id(\"f0-1\") is already used in a.cedar"),
        "{message}"
    );
    for _ in 0..5 {
        assert_eq!(outcome(&files, PARTS), whole);
    }
    let error = super::tests::load_err(&[("mcp.cedarschema", &shipped_schema()), ("b.cedar", &b)]);
    assert!(
        matches!(
            error,
            PolicyError::MissingId {
                line: 31,
                index: 31,
                ..
            }
        ),
        "{error}"
    );
}

/// Only the first policy of each shape in a part is kept past its part;
/// when that one does not validate, every policy of its shape is reported
/// at its own line (that of its condition), as if each had been
/// validated on its own.
#[test]
fn every_policy_of_a_shape_that_fails_validation_is_reported_at_its_line() {
    let invalid = |id: usize| {
        format!(
            "@id(\"v{id}\") permit (principal == Mcp::Workload::\"spiffe://example.org/a{id}\", \
             action == Mcp::Action::\"tools/call\", resource)\nwhen {{ resource.nmae == \"x\" }};\n"
        )
    };
    let [a, b, _] = files(10, usize::MAX, "");
    let b = format!("{b}{}{a}{}{}", invalid(1), invalid(2), invalid(3));
    let files = [("b.cedar", b.as_str())];
    for parallelism in [WHOLE, PARTS] {
        let error = outcome(&files, parallelism).expect_err("invalid policies");
        for (id, line) in [(1, 12), (2, 24), (3, 26)] {
            assert!(
                error.contains(&format!("b.cedar:{line}:"))
                    && error.contains(&format!("policy `v{id}`")),
                "v{id} at line {line}: {error}"
            );
        }
    }
}
