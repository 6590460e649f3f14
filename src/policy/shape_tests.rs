//! Policy shapes: two policies of the same shape validate alike, and the
//! shape keeps everything the validator reads.

use std::str::FromStr;

use cedar_policy::{Policy, PolicySet, Schema, ValidationMode, Validator};

use super::PolicyError;
use super::shape;
use super::tests::{load, load_err, shipped_schema};

/// The shipped schema plus an enum entity type.
fn schema() -> Schema {
    let text = shipped_schema().replace(
        "namespace Mcp {",
        "namespace Mcp {\n  entity Color enum [\"red\", \"blue\"];",
    );
    Schema::from_cedarschema_str(&text).unwrap().0
}

fn shape_of(schema: &Schema, text: &str) -> Option<String> {
    let policy = Policy::from_str(text).unwrap();
    shape::of(schema.as_ref(), policy.as_ref().template())
}

/// Strict validation of one policy: passed, without a warning.
fn clean(schema: &Schema, text: &str) -> bool {
    let set = PolicySet::from_str(text).unwrap();
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    result.validation_passed() && result.validation_warnings().next().is_none()
}

const CALL: &str = r#"action == Mcp::Action::"tools/call""#;

/// Policies, written so that some share a shape and validate differently
/// if the shape were to forget what they differ in.
fn corpus() -> Vec<String> {
    let w = |id: &str| format!(r#"Mcp::Workload::"spiffe://example.org/{id}""#);
    let conditioned =
        |cond: &str| format!("permit (principal, {CALL}, resource) when {{ {cond} }};");
    vec![
        format!(
            "permit (principal == {}, {CALL}, resource in Mcp::Server::\"demo\");",
            w("a")
        ),
        format!(
            "permit (principal == {}, {CALL}, resource in Mcp::Server::\"prod\");",
            w("b")
        ),
        format!(
            "forbid (principal == {}, {CALL}, resource in Mcp::Server::\"demo\");",
            w("a")
        ),
        format!(
            "permit (principal == {}, action == Mcp::Action::\"ping\", resource);",
            w("a")
        ),
        format!(
            "permit (principal == {}, action == Mcp::Action::\"tools/nope\", resource);",
            w("a")
        ),
        format!(
            "permit (principal in {}, {CALL}, resource is Mcp::Tool);",
            w("c")
        ),
        format!(
            "permit (principal, action == Mcp::Action::\"tools/list\", resource is Mcp::Tool in Mcp::Server::\"x\");"
        ),
        conditioned(&format!("{} == {}", w("a"), w("a"))),
        conditioned(&format!("{} == {}", w("a"), w("b"))),
        conditioned(&format!("{} != {}", w("b"), w("b"))),
        conditioned(&format!("{} != {}", w("b"), w("c"))),
        conditioned(&format!(
            "principal == {} || {} == {}",
            w("a"),
            w("b"),
            w("a")
        )),
        conditioned(&format!(
            "principal == {} || {} == {}",
            w("a"),
            w("b"),
            w("c")
        )),
        conditioned("resource.name == \"a\""),
        conditioned("resource.name == \"a\u{202e}b\""),
        conditioned("resource.nmae == \"a\""),
        conditioned("resource in Mcp::Server::\"demo\""),
        conditioned("resource in Mcp::Server::\"de\u{202e}mo\""),
        conditioned("resource in Mcp::Server::\"d\u{0435}mo\""),
        conditioned("Mcp::Color::\"red\" == Mcp::Color::\"red\""),
        conditioned("Mcp::Color::\"red\" == Mcp::Color::\"green\""),
        conditioned("context has arguments.repo"),
        conditioned("context.arguments_representable"),
        conditioned("[Mcp::Server::\"a\", Mcp::Server::\"b\"].contains(resource)"),
        conditioned("{a: Mcp::Server::\"a\"}.a == Mcp::Server::\"a\""),
        conditioned("{a: Mcp::Server::\"a\"}.a == Mcp::Server::\"b\""),
        conditioned("principal.path like \"/ns/*\""),
        conditioned("principal.path like \"/ns/\u{202e}*\""),
        conditioned(
            "if principal.path == \"/\" then true else Mcp::Server::\"a\" == Mcp::Server::\"b\"",
        ),
        // Of the shapes of 7, 10 and 16.
        conditioned(&format!("{} == {}", w("c"), w("c"))),
        conditioned(&format!("{} != {}", w("x"), w("y"))),
        conditioned("resource in Mcp::Server::\"prod\""),
    ]
}

#[test]
fn policies_of_one_shape_validate_alike() {
    let schema = schema();
    let policies: Vec<(String, Option<String>, bool)> = corpus()
        .into_iter()
        .map(|text| {
            let shape = shape_of(&schema, &text);
            let clean = clean(&schema, &text);
            (text, shape, clean)
        })
        .collect();
    let mut shared = 0;
    for (i, (a, shape_a, clean_a)) in policies.iter().enumerate() {
        for (b, shape_b, clean_b) in &policies[i + 1..] {
            if shape_a.is_some() && shape_a == shape_b {
                shared += 1;
                assert_eq!(clean_a, clean_b, "same shape:\n{a}\n{b}");
            }
        }
    }
    // Not vacuous: 0/1, 7/29, 10/30 and 16/31 share shapes.
    assert!(shared >= 4, "{shared} pairs share a shape");
}

#[test]
fn a_shape_keeps_what_validation_reads() {
    let schema = schema();
    let same = |a: &str, b: &str| shape_of(&schema, a) == shape_of(&schema, b);
    let corpus = corpus();
    // Other workloads and servers, written alike: one shape.
    assert!(same(&corpus[0], &corpus[1]));
    assert!(same(&corpus[7], &corpus[29]));
    assert!(same(&corpus[10], &corpus[30]));
    assert!(same(&corpus[16], &corpus[31]));
    // Equal literals and distinct ones; the effect; the action.
    assert!(!same(&corpus[7], &corpus[8]));
    assert!(!same(&corpus[11], &corpus[12]));
    assert!(!same(&corpus[0], &corpus[2]));
    assert!(!same(&corpus[3], &corpus[4]));
    // Ids that the confusable-text checks may warn about; enum ids.
    assert!(!same(&corpus[16], &corpus[17]));
    assert!(!same(&corpus[16], &corpus[18]));
    assert!(!same(&corpus[19], &corpus[20]));
    // Strings, attributes, patterns.
    assert!(!same(&corpus[13], &corpus[14]));
    assert!(!same(&corpus[13], &corpus[15]));
    assert!(!same(&corpus[26], &corpus[27]));
    // The @id is not read.
    assert!(same(
        &format!("@id(\"one\") {}", corpus[0]),
        &format!("@id(\"two\") {}", corpus[1])
    ));
}

#[test]
fn a_policy_with_a_slot_has_no_shape() {
    let schema = schema();
    let template = cedar_policy::Template::from_str(&format!(
        "permit (principal == ?principal, {CALL}, resource);"
    ))
    .unwrap();
    assert_eq!(shape::of(schema.as_ref(), template.as_ref()), None);
}

#[test]
fn a_valid_policy_does_not_vouch_for_an_impossible_one_of_its_shape() {
    let schema = shipped_schema();
    let w = |id: &str| format!(r#"Mcp::Workload::"spiffe://example.org/{id}""#);
    let mut text = String::new();
    for i in 0..3 {
        text.push_str(&format!(
            "@id(\"p{i}\") permit (principal == {}, {CALL}, resource);\n",
            w(&i.to_string())
        ));
    }
    let possible = format!(
        "permit (principal, {CALL}, resource) when {{ {} == {} }};\n",
        w("a"),
        w("a")
    );
    let impossible = format!(
        "permit (principal, {CALL}, resource) when {{ {} == {} }};\n",
        w("a"),
        w("b")
    );
    let files = format!("{text}@id(\"possible\") {possible}@id(\"impossible\") {impossible}");
    let PolicyError::Validation { errors, .. } =
        load_err(&[("mcp.cedarschema", &schema), ("p.cedar", &files)])
    else {
        panic!("a validation error");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("p.cedar:5:"), "{errors:?}");
    assert!(errors[0].contains("policy `impossible`"), "{errors:?}");
    let files = format!("{text}@id(\"possible\") {possible}");
    let engine = load(&[("mcp.cedarschema", &schema), ("p.cedar", &files)]);
    assert_eq!(engine.policy_count(), 4);
}
