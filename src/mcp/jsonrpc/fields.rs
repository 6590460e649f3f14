//! The shape of one message: the members read from a JSON-RPC object
//! (`Fields`, filled in by the scanner in the parent module) checked into a
//! [`Message`] of a kind, with what policy needs taken from its params.
//!
//! Must never: accept a member it does not know, a message that is two
//! kinds at once, or a target it cannot name exactly.

use std::borrow::Cow;

use super::{Checked, Id, Invalid, Kind, Message, ParseError, RawJson};
use crate::mcp::json::JsonType;
use crate::mcp::method::{self, TargetKind};

/// A member that must be a string: its unescaped value, or the fact it was
/// something else.
#[derive(Debug)]
pub(super) enum Str<'a> {
    Is(Cow<'a, str>),
    Not,
}

/// The `id` member as read.
pub(super) enum IdField<'a> {
    Valid(Id<'a>),
    Null,
    Bad,
}

/// The members of `params` that policy needs, gathered whatever the method
/// (members may come in any order, `method` after `params`).
#[derive(Default)]
pub(super) struct ParamsFields<'a> {
    pub(super) name: Option<Str<'a>>,
    pub(super) uri: Option<Str<'a>>,
    pub(super) arguments: Option<(&'a str, JsonType)>,
    pub(super) protocol_version: Option<Str<'a>>,
    pub(super) meta: Option<MetaField<'a>>,
}

/// `params._meta`: whether it is an object, and its protocol version.
pub(super) struct MetaField<'a> {
    pub(super) is_object: bool,
    pub(super) protocol_version: Option<Str<'a>>,
}

/// Everything read from one message object, before its shape is checked.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub(super) jsonrpc: Option<Str<'a>>,
    pub(super) method: Option<Str<'a>>,
    pub(super) id: Option<IdField<'a>>,
    pub(super) params: Option<(&'a str, JsonType)>,
    /// Filled in place while `params` is walked (it is large to move).
    pub(super) params_fields: ParamsFields<'a>,
    pub(super) result: Option<&'a str>,
    pub(super) error: Option<(&'a str, JsonType)>,
    pub(super) unknown_member: bool,
}

impl<'a> Fields<'a> {
    /// Checks the shape and decides the kind. Only called once the object
    /// has been walked, so a JSON error later in the body still wins.
    pub(super) fn take_message(&mut self) -> Checked<'a> {
        let id = match &self.id {
            Some(IdField::Valid(id)) => Some(id.raw_json()),
            _ => None,
        };
        self.check().map_err(|reason| ParseError::InvalidRequest {
            reason,
            id: id.map(Box::from),
        })
    }

    fn check(&mut self) -> Result<Message<'a>, Invalid> {
        if self.unknown_member {
            return Err(Invalid::UnknownMember);
        }
        match &self.jsonrpc {
            None => return Err(Invalid::MissingJsonrpc),
            Some(Str::Is(v)) if v == "2.0" => {}
            Some(_) => return Err(Invalid::WrongJsonrpc),
        }
        let has_result = self.result.is_some() || self.error.is_some();
        match self.method.take() {
            Some(Str::Is(_)) if has_result => Err(Invalid::MethodWithResult),
            Some(Str::Is(method)) => self.call(method),
            Some(Str::Not) => Err(Invalid::MethodNotString),
            None if has_result => self.response(),
            None => Err(Invalid::MissingMethod),
        }
    }

    /// A request or a notification.
    fn call(&mut self, method: Cow<'a, str>) -> Result<Message<'a>, Invalid> {
        let (id, kind) = match self.id.take() {
            None => (None, Kind::Notification),
            Some(IdField::Valid(id)) => (Some(id), Kind::Request),
            Some(IdField::Null) => return Err(Invalid::NullId),
            Some(IdField::Bad) => return Err(Invalid::BadId),
        };
        if has_control(&method) {
            return Err(Invalid::ControlCharacter);
        }
        let (params, extracted) = match self.params.take() {
            None if method::target_kind(&method).is_some() => return Err(Invalid::MissingTarget),
            None => (None, Extracted::default()),
            Some((raw, JsonType::Object)) => (Some(raw), self.params_fields.extract(&method)?),
            Some(_) => return Err(Invalid::ParamsNotObject),
        };
        Ok(Message {
            id,
            kind,
            method: Some(method),
            params: params.map(RawJson),
            target: extracted.target,
            arguments: extracted.arguments.map(RawJson),
            protocol_version: extracted.protocol_version,
            result: None,
            error: None,
        })
    }

    fn response(&mut self) -> Result<Message<'a>, Invalid> {
        if self.params.is_some() {
            return Err(Invalid::ParamsInResponse);
        }
        let id = match (self.id.take(), self.result.is_some()) {
            (Some(IdField::Bad), _) => return Err(Invalid::BadId),
            (Some(IdField::Valid(id)), _) => Some(id),
            // JSON-RPC: an error reply has a null id when the request's id
            // could not be read.
            (Some(IdField::Null) | None, false) => None,
            (Some(IdField::Null), true) => return Err(Invalid::NullId),
            (None, true) => return Err(Invalid::MissingId),
        };
        let (result, error) = match (self.result, self.error) {
            (Some(_), Some(_)) => return Err(Invalid::ResultAndError),
            (_, Some((_, ty))) if ty != JsonType::Object => {
                return Err(Invalid::ErrorNotObject);
            }
            (result, error) => (result, error.map(|(raw, _)| raw)),
        };
        Ok(Message {
            id,
            kind: Kind::Response,
            method: None,
            params: None,
            target: None,
            arguments: None,
            protocol_version: None,
            result: result.map(RawJson),
            error: error.map(RawJson),
        })
    }
}

/// What a method's params yield for policy.
#[derive(Default)]
struct Extracted<'a> {
    target: Option<Cow<'a, str>>,
    arguments: Option<&'a str>,
    protocol_version: Option<Cow<'a, str>>,
}

impl<'a> ParamsFields<'a> {
    fn extract(&mut self, method: &str) -> Result<Extracted<'a>, Invalid> {
        let meta_version = match self.meta.take() {
            None => None,
            Some(MetaField {
                is_object: false, ..
            }) => return Err(Invalid::MetaNotObject),
            Some(MetaField {
                protocol_version, ..
            }) => version(protocol_version)?,
        };
        let protocol_version = match method {
            "initialize" => version(self.protocol_version.take())?.or(meta_version),
            _ => meta_version,
        };
        let (target, arguments) = match method::target_kind(method) {
            None => (None, None),
            Some(TargetKind::Resource) => (Some(required(self.uri.take())?), None),
            Some(TargetKind::Tool | TargetKind::Prompt) => {
                let arguments = match self.arguments {
                    Some((raw, JsonType::Object)) => Some(raw),
                    Some(_) => return Err(Invalid::ArgumentsNotObject),
                    None => None,
                };
                (Some(required(self.name.take())?), arguments)
            }
        };
        Ok(Extracted {
            target,
            arguments,
            protocol_version,
        })
    }
}

fn required(target: Option<Str<'_>>) -> Result<Cow<'_, str>, Invalid> {
    match target {
        Some(Str::Is(value)) if has_control(&value) => Err(Invalid::ControlCharacter),
        Some(Str::Is(value)) => Ok(value),
        Some(Str::Not) => Err(Invalid::TargetNotString),
        None => Err(Invalid::MissingTarget),
    }
}

fn version(field: Option<Str<'_>>) -> Result<Option<Cow<'_, str>>, Invalid> {
    match field {
        Some(Str::Is(value)) => Ok(Some(value)),
        Some(Str::Not) => Err(Invalid::ProtocolVersionNotString),
        None => Ok(None),
    }
}

/// Control characters (escaped in the JSON) in a name policy matches on:
/// an upstream may cut a name at NUL or a log may split it at a newline, so
/// the name decided on would not be the name used.
fn has_control(name: &str) -> bool {
    name.chars().any(char::is_control)
}
