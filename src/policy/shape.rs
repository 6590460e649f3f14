//! Policy shapes: what Cedar's strict validation of one policy reads.
//!
//! Validation costs about 0.1 ms a policy (Cedar typechecks it against
//! every request environment of the schema), most of loading a large set,
//! and large sets are mostly the same policy for many workloads. Two
//! policies of the same shape, the same text but for the ids of
//! non-action entities, validate alike, so `load` validates one policy of
//! each shape and, when all of those are clean, skips the rest.
//!
//! What Cedar 4.14's validator reads of an entity literal `T::"id"` of a
//! standard (not enum, not external) entity type: its type (declared?
//! attributes? `in` which types?), whether it equals another literal
//! (`T::"a" == T::"b"` types as false), and, in its confusable-text checks,
//! the characters of the id. So a shape keeps the type, numbers the
//! distinct literals in order of appearance (equal literals get the same
//! number), and keeps verbatim any id with a character other than printable
//! ASCII or a space, which is the only kind those checks can warn about.
//! Action literals, enum and external entity types and everything else
//! (strings, patterns, attributes, operators) are kept as they are.
//! Annotations (the `@id`) are left out: the validator does not read them.
//!
//! Must never give two policies the same shape when one could validate
//! differently from the other; when in doubt (a slot, an unknown), a
//! policy has no shape and is validated on its own.

use std::fmt::Write;

use cedar_policy_core::ast::{
    ActionConstraint, EntityReference, EntityUID, Expr, ExprKind, Literal,
    PrincipalOrResourceConstraint, Template,
};
use cedar_policy_core::validator::{ValidatorEntityTypeKind, ValidatorSchema};

/// Builds one policy's shape.
struct Shape<'a> {
    schema: &'a ValidatorSchema,
    text: String,
    /// The entity literals numbered so far.
    numbered: Vec<&'a EntityUID>,
}

/// The shape of `policy`, or `None` when it must be validated on its own.
pub(super) fn of(schema: &ValidatorSchema, policy: &Template) -> Option<String> {
    let mut shape = Shape {
        schema,
        text: String::with_capacity(256),
        numbered: Vec::new(),
    };
    write!(shape.text, "{:?};", policy.effect()).ok()?;
    shape.scope(policy.principal_constraint().as_inner())?;
    shape.action(policy.action_constraint())?;
    shape.scope(policy.resource_constraint().as_inner())?;
    if let Some(conditions) = policy.non_scope_constraints() {
        for expr in conditions.subexpressions() {
            shape.node(expr)?;
        }
    }
    Some(shape.text)
}

impl<'a> Shape<'a> {
    fn scope(&mut self, scope: &'a PrincipalOrResourceConstraint) -> Option<()> {
        let reference = |shape: &mut Self, reference: &'a EntityReference| match reference {
            EntityReference::EUID(uid) => shape.entity(uid),
            EntityReference::Slot(_) => None,
        };
        match scope {
            PrincipalOrResourceConstraint::Any => self.text.push_str("any;"),
            PrincipalOrResourceConstraint::In(uid) => {
                self.text.push_str("in ");
                reference(self, uid)?;
            }
            PrincipalOrResourceConstraint::Eq(uid) => {
                self.text.push_str("== ");
                reference(self, uid)?;
            }
            PrincipalOrResourceConstraint::Is(t) => write!(self.text, "is {t};").ok()?,
            PrincipalOrResourceConstraint::IsIn(t, uid) => {
                write!(self.text, "is {t} in ").ok()?;
                reference(self, uid)?;
            }
        }
        Some(())
    }

    /// Actions as written: the validator reads their ids.
    fn action(&mut self, action: &ActionConstraint) -> Option<()> {
        let text = &mut self.text;
        match action {
            ActionConstraint::Any => text.push_str("any;"),
            ActionConstraint::Eq(uid) => write!(text, "== {uid};").ok()?,
            ActionConstraint::In(uids) => {
                text.push_str("in ");
                for uid in uids {
                    write!(text, "{uid},").ok()?;
                }
                text.push(';');
            }
        }
        Some(())
    }

    /// One node of the conditions, without its children: they follow it,
    /// in the iterator's (pre)order, as many as the node says.
    fn node(&mut self, expr: &'a Expr) -> Option<()> {
        let text = &mut self.text;
        match expr.expr_kind() {
            ExprKind::Lit(Literal::EntityUID(uid)) => return self.entity(uid),
            ExprKind::Lit(literal) => write!(text, "lit {literal:?};"),
            ExprKind::Var(var) => write!(text, "var {var:?};"),
            ExprKind::Slot(_) | ExprKind::Unknown(_) => return None,
            ExprKind::If { .. } => write!(text, "if;"),
            ExprKind::And { .. } => write!(text, "and;"),
            ExprKind::Or { .. } => write!(text, "or;"),
            ExprKind::UnaryApp { op, .. } => write!(text, "unary {op:?};"),
            ExprKind::BinaryApp { op, .. } => write!(text, "binary {op:?};"),
            ExprKind::ExtensionFunctionApp { fn_name, args } => {
                write!(text, "call {fn_name} {};", args.len())
            }
            ExprKind::GetAttr { attr, .. } => write!(text, "get {attr:?};"),
            ExprKind::HasAttr { attr, .. } => write!(text, "has {attr:?};"),
            ExprKind::ExtHasAttr { attrs, .. } => write!(text, "has {attrs:?};"),
            ExprKind::Like { pattern, .. } => write!(text, "like {pattern:?};"),
            ExprKind::Is { entity_type, .. } => write!(text, "is {entity_type};"),
            ExprKind::Set(items) => write!(text, "set {};", items.len()),
            ExprKind::Record(fields) => write!(text, "record {:?};", fields.keys()),
        }
        .ok()
    }

    /// An entity literal: numbered when only its type and its equality
    /// with other literals can matter (see the module doc), else as is.
    fn entity(&mut self, uid: &'a EntityUID) -> Option<()> {
        let id: &str = uid.eid().as_ref();
        let plain = id.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        let standard = !uid.is_action()
            && self
                .schema
                .get_entity_type(uid.entity_type())
                .is_some_and(|t| matches!(t.kind, ValidatorEntityTypeKind::Standard(_)));
        if plain && standard {
            let number = match self.numbered.iter().position(|seen| *seen == uid) {
                Some(number) => number,
                None => {
                    self.numbered.push(uid);
                    self.numbered.len() - 1
                }
            };
            write!(self.text, "{}#{number};", uid.entity_type()).ok()
        } else {
            write!(self.text, "{}={id:?};", uid.entity_type()).ok()
        }
    }
}
