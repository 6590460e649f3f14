//! What the policy engine logs at debug level while it decides one request:
//! Cedar's own message for a policy that failed to evaluate, or why the
//! request could not be built. `explain` shows it next to the decision.
//!
//! Best effort by design: the engine's public API gives the erroring policy
//! ids, not the messages, so this listens to its debug events on the
//! current thread only (a scoped subscriber; the global one is untouched).
//! If the engine logs nothing, there is simply no detail to show; it must
//! never change a decision.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Events from the policy module only.
const TARGET: &str = "spiffe_mcp_gateway::policy";

/// Collects each event as `message: field=value ...`.
struct Capture(Arc<Mutex<Vec<String>>>);

/// Formats one event's fields.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

/// Runs `decide` with the policy module's debug events captured.
pub(super) fn capture<T>(decide: impl FnOnce() -> T) -> (T, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&lines)));
    let result = tracing::subscriber::with_default(subscriber, decide);
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(PoisonError::into_inner));
    (result, lines)
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with(TARGET) {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let text = if line.fields.is_empty() {
            line.message
        } else {
            format!("{}:{}", line.message, line.fields)
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text);
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            // Writing to a String cannot fail.
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn captures_policy_events_only() {
        let ((), lines) = super::capture(|| {
            tracing::debug!(target: "spiffe_mcp_gateway::policy", policy = "p", error = "boom", "policy evaluation error");
            tracing::debug!(target: "other", "ignored");
        });
        assert_eq!(lines, ["policy evaluation error: policy=p error=boom"]);
    }
}
