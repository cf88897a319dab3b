//! A tracing layer that keeps this process's latest warnings and errors
//! for the dashboard (`nixswarm_gateway::activity::RecentLog`).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The layer.
#[derive(Debug)]
pub struct Recent;

struct Message(String, String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.1, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Recent {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        // WARN and ERROR (a lower level is a more severe one).
        if level > Level::WARN {
            return;
        }
        let mut m = Message(String::new(), String::new());
        event.record(&mut m);
        nixswarm_gateway::activity::RecentLog::global().push(level.as_str(), format!("{}{}", m.0, m.1));
    }
}
